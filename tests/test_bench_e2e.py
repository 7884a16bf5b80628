"""The end-to-end benchmark on the CPU with a tiny model: training iterations and generation."""
from __future__ import annotations

import json
import math

import pytest
import torch

from bench.__main__ import main as bench_main


@pytest.fixture
def keep_threads():
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


def test_e2e_quick_cpu(tmp_path, keep_threads, capsys):
    assert bench_main(["e2e", "--quick", "--device", "cpu", "--rank", "1", "--batch", "2", "--iters", "1",
                       "--warmup", "0", "--out", str(tmp_path)]) == 0
    assert "| kind | batch |" in capsys.readouterr().out
    files = sorted(p.name for p in tmp_path.iterdir())
    assert [f.rsplit(".", 1)[1] for f in files] == ["json", "md"] and files[0].startswith("cpu-")
    report = json.loads((tmp_path / files[0]).read_text())
    assert {"device", "driver", "torch", "triton", "cuda", "python", "cpu", "date", "command"} <= set(report["meta"])
    recs = report["records"]
    kinds = {(r["kind"], r["reg"], r["method"]) for r in recs}
    assert kinds == {(k, g, m) for k, g in (("train", False), ("train", True), ("generate", None))
                     for m in ("ours", "published", "shared")}
    for r in recs:
        if r["method"] == "ours":
            assert r["median_ms"] is None and "CUDA" in r["skipped"]
            continue
        assert r["error"] is None, r["error"]
        assert math.isfinite(r["median_ms"]) and r["median_ms"] > 0 and r["images_per_s"] > 0
        if r["kind"] == "generate":
            assert r["rel_err"] < 1e-4
        else:
            assert set(r["steps_ms"]) >= {"d", "g", "ema"} and (("r1" in r["steps_ms"]) == r["reg"])


def test_published_form_reaches_every_modulated_conv(monkeypatch):
    """The published-style method runs the grouped per-sample-weight path in every modulated conv."""
    from bench.e2e import build_models, modconv_form
    from fastlora import ModulatedConv2d
    from fastlora import reference

    G, _ = build_models(16, True, 1, "inner", torch.device("cpu"), 0)
    calls = {"grouped": 0}
    real = reference._modconv_grouped

    def counting(*a, **k):
        calls["grouped"] += 1
        return real(*a, **k)

    monkeypatch.setattr(reference, "_modconv_grouped", counting)
    n_convs = sum(isinstance(m, ModulatedConv2d) for m in G.modules())
    z = torch.randn(2, G.style_dim)
    with torch.no_grad():
        with modconv_form(G, "grouped"):
            a = G(z, backend="torch")
        assert calls["grouped"] == n_convs
        b = G(z, backend="torch")
    assert calls["grouped"] == n_convs  # the wrapper is gone after the context
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
