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
    for name, cfg in (("a", AdapterConfig(rank=2)), ("b", AdapterConfig(kind="left")),
                      ("m", AdapterConfig(kind="left-linear"))):
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
    assert [e["name"] for e in cfg["tasks"]] == ["a", "b", "m"] and cfg["tasks"][0]["discriminator"]
    assert (tmp_path / "ck" / "tasks" / "a" / "adapter.safetensors").is_file()
    assert (tmp_path / "ck" / "d_tasks" / "a" / "adapter_config.json").is_file()
    G2, D2, info = load_checkpoint(tmp_path / "ck", load_g_train=True)
    assert info["tasks"] == ["a", "b", "m"] and info["g"] is not None
    assert parameter_report(G2, D2) == parameter_report(G, D)
    z, x = torch.randn(2, 16), torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        for t in (None, "a", "b", "m"):
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


def test_pack_checkpoint_stores_fp16_and_loads_exactly(tmp_path):
    from colorgan.checkpoint import pack_checkpoint

    G, D = models()
    src = save_checkpoint(tmp_path / "full", G, D, g_train=G)
    packed = pack_checkpoint(src, tmp_path / "packed")
    tensors = load_file(str(packed / "base.safetensors"))
    assert tensors and all(v.dtype == torch.float16 for v in tensors.values() if v.is_floating_point())
    assert not any(k.startswith("g.") for k in tensors)  # no training generator
    raw = (packed / "base.safetensors").read_bytes()
    data_bytes = len(raw) - 8 - int.from_bytes(raw[:8], "little")  # minus the JSON header
    assert data_bytes <= 2 * sum(v.numel() for v in tensors.values())
    cfg = json.loads((packed / "config.json").read_text())
    assert cfg["tasks"] == [] and cfg["source"]["storage_dtype"] == "float16" and cfg["base"]["modules"] == ["g_ema", "d"]
    G2, D2, _ = load_checkpoint(packed)
    assert next(G2.parameters()).dtype == torch.float32 and D2 is not None
    # what loads is exactly the base the checksum names, so adapters trained on it can be stored with it
    assert fastlora.base_checksum(G2) == cfg["base"]["g_ema_checksum"]
    fastlora.add_task(G2, "new", AdapterConfig())
    save_task_to_checkpoint(packed, G2, "new")
    z = torch.randn(2, 16)
    with torch.no_grad():
        fastlora.set_task(G, None)
        ref, got = G(z), G2(z)
    assert 0 < (got - ref).abs().max() < 0.05  # fp16 rounding of the weights, nothing more
    with pytest.raises(FileExistsError):
        pack_checkpoint(src, packed)
    with pytest.raises(TypeError, match="floating torch.dtype"):
        pack_checkpoint(src, tmp_path / "p2", dtype=torch.int8)


def test_shipped_base_names_resolve_and_are_read_only(tmp_path, monkeypatch):
    from colorgan import checkpoint as ck

    G, D = models()
    fastlora.add_task(G, "c", AdapterConfig())
    shipped = tmp_path / "assets" / "base"
    save_checkpoint(shipped / "tiny", G, D, tasks=[])
    monkeypatch.setattr(ck, "SHIPPED_DIR", shipped)
    assert ck.shipped_bases() == {"tiny": shipped / "tiny"}
    monkeypatch.chdir(tmp_path)
    G2, _, info = load_checkpoint("tiny")
    assert info["path"] == str(shipped / "tiny") and ck.is_shipped("tiny")
    with pytest.raises(PermissionError, match="shipped inside the package"):
        save_task_to_checkpoint("tiny", G, "c")
    with pytest.raises(FileNotFoundError, match="shipped base"):
        ck.read_checkpoint_config("no-such-base")
    (tmp_path / "tiny").mkdir()  # a non-checkpoint folder of the same name does not shadow the shipped base
    assert ck.is_shipped("tiny")
    save_checkpoint(tmp_path / "tiny", G, tasks=["c"], overwrite=True)  # a local checkpoint folder wins
    assert load_checkpoint("tiny")[2]["tasks"] == ["c"] and not ck.is_shipped("tiny")
