"""Checkpoint folders: round trip, atomic/no-overwrite writes, strict loading with readable diffs."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import fastlora
from colorgan import Discriminator, Generator, load_checkpoint, save_checkpoint
from colorgan.checkpoint import parameter_report, save_task_to_checkpoint
from fastlora import AdapterConfig

CH = {4: 16, 8: 16, 16: 8, 32: 8}


def models():
    torch.manual_seed(0)
    G = Generator(32, 16, 2, channels=CH)
    D = Discriminator(32, channels=CH, patch_heads=True, adapters=True)
    for name, cfg in (("a", AdapterConfig(rank=2)), ("b", AdapterConfig(kind="left"))):
        fastlora.add_task(G, name, cfg)
        with torch.no_grad():
            for p in fastlora.task_parameters(G, name):
                p.add_(torch.randn_like(p) * 0.1)
    fastlora.add_task(D, "a", AdapterConfig())
    return G, D


def test_round_trip(tmp_path):
    G, D = models()
    save_checkpoint(tmp_path / "ck", G, D, g_train=G)
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["generator"]["channels"] == {str(k): v for k, v in CH.items()}
    assert [e["name"] for e in cfg["tasks"]] == ["a", "b"] and cfg["tasks"][0]["discriminator"]
    assert (tmp_path / "ck" / "tasks" / "a" / "adapter.safetensors").is_file()
    assert (tmp_path / "ck" / "d_tasks" / "a" / "adapter_config.json").is_file()
    G2, D2, info = load_checkpoint(tmp_path / "ck", load_g_train=True)
    assert info["tasks"] == ["a", "b"] and info["g"] is not None
    assert parameter_report(G2, D2) == parameter_report(G, D)
    z, x = torch.randn(2, 16), torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        for t in (None, "a", "b"):
            fastlora.set_task(G, t)
            fastlora.set_task(G2, t)
            assert torch.equal(G(z, truncation=0.5), G2(z, truncation=0.5))
        fastlora.set_task(D, "a")
        fastlora.set_task(D2, "a")
        assert torch.equal(D(x), D2(x)) and torch.equal(D(x, patch=1), D2(x, patch=1))
    G3, D3, info = load_checkpoint(tmp_path / "ck", tasks=["b"], load_d=False)
    assert D3 is None and fastlora.task_names(G3) == ["b"]
    with pytest.raises(KeyError, match="unknown task 'zz'"):
        load_checkpoint(tmp_path / "ck", tasks=["zz"])


def test_no_overwrite_and_add_task(tmp_path):
    G, D = models()
    save_checkpoint(tmp_path / "ck", G, tasks=["a"])
    with pytest.raises(FileExistsError, match="overwrite"):
        save_checkpoint(tmp_path / "ck", G)
    save_task_to_checkpoint(tmp_path / "ck", G, "b")
    with pytest.raises(FileExistsError, match="already has task 'b'"):
        save_task_to_checkpoint(tmp_path / "ck", G, "b")
    assert load_checkpoint(tmp_path / "ck")[2]["tasks"] == ["a", "b"]
    other = Generator(32, 16, 2, channels=CH)
    fastlora.add_task(other, "c", AdapterConfig())
    with pytest.raises(ValueError, match="base"):
        save_task_to_checkpoint(tmp_path / "ck", other, "c")
    fastlora.add_task(G, "base", AdapterConfig())
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "ck2", G)
    assert not (tmp_path / "ck2").exists()


def test_strict_loading_names_the_keys(tmp_path):
    G, _ = models()
    save_checkpoint(tmp_path / "ck", G, tasks=[])
    f = tmp_path / "ck" / "base.safetensors"
    t = load_file(f)
    del t["g_ema.conv1.activate.bias"]
    t["g_ema.convs.0.conv.weight"] = torch.zeros(3, 3, 3, 3)
    t["g_ema.bogus"] = torch.zeros(1)
    save_file(t, f)
    with pytest.raises(ValueError, match="checksum"):
        load_checkpoint(tmp_path / "ck")
    with pytest.raises(ValueError, match=r"(?s)missing \(1\).*conv1\.activate\.bias.*unexpected \(1\).*bogus"
                                         r".*wrong shape.*convs\.0\.conv\.weight: expected \[16, 16, 3, 3\]"):
        load_checkpoint(tmp_path / "ck", verify=False)
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    cfg["format_version"] = 99
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="version 99"):
        load_checkpoint(tmp_path / "ck")
    with pytest.raises(FileNotFoundError, match="checkpoint folder"):
        load_checkpoint(tmp_path / "nothing")
