"""The emoji base shipped in the package (colorgan/assets/base/emoji32) and `colorgan demo` on it."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import fastlora
from colorgan.checkpoint import is_shipped, load_checkpoint, read_checkpoint_config, shipped_bases

MAX_BYTES = 20_000_000  # issue 10: generator + discriminator at most about 20 MB together


def test_shipped_base_is_small_fp16_and_loads_exactly():
    folder = shipped_bases()["emoji32"]
    assert is_shipped("emoji32")
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) <= MAX_BYTES
    cfg = read_checkpoint_config("emoji32")
    assert cfg["generator"]["size"] == 32 and cfg["tasks"] == []
    assert cfg["base"]["modules"] == ["g_ema", "d"] and cfg["source"]["kind"] == "pretrain"
    assert cfg["source"]["storage_dtype"] == "float16" and cfg["source"]["step"] >= 1000
    with safe_open(str(folder / "base.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    G, D, _ = load_checkpoint("emoji32")
    assert fastlora.base_checksum(G) == cfg["base"]["g_ema_checksum"]  # adapters trained on it can be stored
    assert torch.isfinite(G.w_avg).all()
    with torch.no_grad():
        img = G(torch.randn(8, G.style_dim, generator=torch.Generator().manual_seed(0)), noise_mode="const")
        score = D(img)
    assert img.shape == (8, 3, 32, 32) and torch.isfinite(img).all() and torch.isfinite(score).all()
    assert img.std(0).mean() > 0.05  # different latents give different images (no collapse to one picture)


def test_demo_on_the_shipped_base(tmp_path, capsys):
    from colorgan.cli import main

    assert main(["demo", "--out", str(tmp_path / "demo"), "--task-iter", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "base: emoji32" in out and "[5/5] ONNX export of task 'flags'" in out
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["base"] == "emoji32" and summary["task_iter"] == 1
    assert list(summary["tasks"]) == ["flags", "openmoji", "twemoji"]
    for info in summary["tasks"].values():
        assert 0 < info["fraction_of_generator"] < 0.01 and info["train_seconds"] > 0
    assert summary["export"]["rel"] < 1e-4 and (tmp_path / "demo" / "samples" / "grid.png").is_file()
    with pytest.raises(PermissionError):
        from colorgan.checkpoint import save_task_to_checkpoint

        G, _, _ = load_checkpoint(tmp_path / "demo" / "run" / "checkpoint", tasks=["flags"])
        save_task_to_checkpoint("emoji32", G, "flags")
