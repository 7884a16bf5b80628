"""Quick CPU run of the ONNX throughput benchmark (bench/onnx.py) on a tiny checkpoint."""
from __future__ import annotations

import json

import pytest
import torch

import fastlora
from colorgan import Generator, save_checkpoint

pytest.importorskip("onnxruntime")


def test_bench_onnx_cpu(tmp_path, capsys):
    from bench.onnx import main

    torch.manual_seed(0)
    G = Generator(16, style_dim=16, n_mlp=2, channels={4: 16, 8: 16, 16: 8})
    G.update_w_avg(n=256)
    fastlora.add_task(G, "t", fastlora.AdapterConfig(kind="llora", rank=2))
    ckpt = save_checkpoint(tmp_path / "ck", G)
    saved = torch.get_num_threads()
    try:
        assert main(["--ckpt", str(ckpt), "--task", "t", "--batches", "1,3", "--warmup", "1", "--iters", "2",
                     "--threads", "1", "--out", str(tmp_path / "res")]) == 0
    finally:
        torch.set_num_threads(saved)
    files = sorted((tmp_path / "res").iterdir())
    assert [f.suffix for f in files] == [".json", ".md"] and files[0].name.endswith("-onnx.json")
    report = json.loads(files[0].read_text())
    rows = {(r["path"], r["batch"]): r for r in report["rows"]}
    for path in ("ort-cpu", "torch-eager", "torch-merged"):
        for b in (1, 3):
            assert rows[(path, b)]["images_per_s"] > 0
    assert rows[("ort-cpu", 1)]["providers"] == ["CPUExecutionProvider"]
    if not torch.cuda.is_available():
        assert "fell back" in rows[("ort-cuda", 1)]["skipped"] and rows[("torch-fused", 1)]["skipped"]
    assert report["parity"]["rel"] < 1e-4 and report["onnx_bytes"] > 0
    assert "| ort-cpu |" in capsys.readouterr().out
