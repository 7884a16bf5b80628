"""bench.forward runs (quick, torch methods on CPU) and writes well-formed JSON records."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

FIELDS = {"device", "torch", "triton", "layer", "batch", "rank", "act", "dtype", "mode", "method", "median_ms",
          "peak_mb", "rel_err"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the quick CPU run; on a GPU run the benchmark itself")
def test_bench_forward_quick_cpu(tmp_path):
    out = tmp_path / "forward.json"
    proc = subprocess.run([sys.executable, "-m", "bench.forward", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "| layer | batch |" in proc.stdout
    recs = json.loads(out.read_text())
    assert recs and all(set(r) == FIELDS for r in recs)
    assert {r["method"] for r in recs} == {"grouped", "shared", "merged_conv"}
    for r in recs:
        assert r["mode"] == "forward" and r["median_ms"] > 0
        if r["method"] == "merged_conv":
            assert r["rel_err"] is None
        else:  # fp32 torch paths against the float64 reference
            assert 0 <= r["rel_err"] < 1e-5
    assert {r["rank"] for r in recs} == {1, 8}


def test_bench_forward_refuses_fused_without_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    from bench import forward

    with pytest.raises(SystemExit, match="CUDA"):
        forward.main(["--quick", "--methods", "fused", "--out", str(tmp_path / "x.json")])
