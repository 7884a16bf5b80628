"""bench.forward: the forward-only alias of `bench layers` (old method names still accepted)."""
from __future__ import annotations

import json

import pytest
import torch

from bench import forward


def test_translate_maps_old_method_names():
    args = forward.translate(["--quick", "--methods", "fused,grouped,shared,merged_conv"])
    assert "--methods=ours,published,shared,merged" in args
    assert "--mode=forward" in args and "--kind=forward" in args


def test_bench_forward_quick_cpu(tmp_path, capsys):
    saved = torch.get_num_threads()
    try:
        forward.main(["--device", "cpu", "--layers", "up16@8", "--rank", "1", "--act", "both",
                      "--methods", "grouped,shared,merged_conv", "--cpu-reps", "2", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(saved)
    assert "| layer | batch |" in capsys.readouterr().out
    js = list(tmp_path.glob("*-forward.json"))
    assert len(js) == 1
    recs = json.loads(js[0].read_text())["records"]
    assert {r["method"] for r in recs} == {"published", "shared", "merged"}
    for r in recs:
        assert r["mode"] == "forward" and r["median_ms"] > 0 and 0 <= r["rel_err"] < 1e-5
