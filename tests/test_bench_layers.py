"""The layer benchmark harness end to end on the CPU (tiny shapes, PyTorch paths): JSON, markdown, plot."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from bench import common
from bench.__main__ import main as bench_main

REQUIRED = {"device", "torch", "triton", "layer", "batch", "rank", "act", "dtype", "mode", "method", "median_ms",
            "p20_ms", "p80_ms", "peak_mb", "rel_err", "skipped", "speedup_vs_peft", "speedup_vs_published",
            "speedup_vs_merged", "tflops", "gbps"}
META = {"device", "driver", "torch", "triton", "cuda", "python", "cpu", "date", "command", "ceilings"}


@pytest.fixture
def keep_threads():
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def layers_run(tmp_path_factory):
    """One quick CPU run shared by the tests below (the harness is the thing under test)."""
    saved = torch.get_num_threads()
    out = tmp_path_factory.mktemp("bench")
    import contextlib
    import io

    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            bench_main(["layers", "--quick", "--device", "cpu", "--rank", "2", "--act", "inner,both,lora",
                        "--cpu-reps", "2", "--out", str(out)])
    finally:
        torch.set_num_threads(saved)
    return out, buf.getvalue()


def test_layers_writes_json_markdown_and_plot(layers_run):
    out, stdout = layers_run
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 3 and all(f.startswith("cpu-") and "-layers." in f for f in files)
    assert "| layer | batch | rank | act | dtype | mode |" in stdout
    report = json.loads(next(out.glob("*.json")).read_text())
    assert META <= set(report["meta"])
    assert report["meta"]["ceilings"] is None and report["meta"]["cuda"] in (None, torch.version.cuda)
    recs = report["records"]
    assert recs and all(REQUIRED <= set(r) for r in recs)
    assert {r["mode"] for r in recs} == {"forward", "backward", "fwd+bwd"}
    assert {r["layer"] for r in recs} == {"conv16@4", "up16@8", "torgb16@8"}
    from PIL import Image

    png = next(out.glob("*.png"))
    with Image.open(png) as im:
        im.verify()
    assert (out / png.name.replace(".png", ".md")).read_text().startswith("# Layer benchmark")


def test_layers_records_are_timed_and_correct(layers_run):
    out, _ = layers_run
    recs = json.loads(next(out.glob("*.json")).read_text())["records"]
    timed = [r for r in recs if r["median_ms"] is not None]
    assert {r["method"] for r in timed} == {"base", "merged", "peft", "published", "shared"}
    for r in timed:
        assert math.isfinite(r["median_ms"]) and r["median_ms"] > 0 and r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        assert r["error"] is None
        if r["method"] == "base":
            assert r["rel_err"] is None
            continue
        # fp32 torch paths against the float64 reference: output and gradients (x, style, adapters)
        assert 0 <= r["rel_err"] < 1e-5, r
        if r["mode"] != "forward":
            assert r["rel_err_grad"] is not None
        if r["mode"] != "backward":
            assert r["rel_err_out"] is not None
    for r in recs:
        if r["method"] == "peft" and r["act"] == "both":
            assert r["median_ms"] is None and "bypass" in r["skipped"]
        if r["method"] in ("ours", "compile-published", "compile-shared"):
            assert r["median_ms"] is None and r["skipped"]
    by = {(r["layer"], r["act"], r["mode"], r["method"]): r for r in recs}
    r = by[("conv16@4", "inner", "forward", "shared")]
    assert r["speedup_vs_peft"] == pytest.approx(by[("conv16@4", "inner", "forward", "peft")]["median_ms"]
                                                 / r["median_ms"])


def test_layers_refuses_to_overwrite(layers_run, keep_threads):
    out, _ = layers_run
    with pytest.raises(SystemExit, match="overwrite"):
        bench_main(["layers", "--quick", "--device", "cpu", "--out", str(out)])


def test_layers_rejects_unknown_values(tmp_path, keep_threads):
    with pytest.raises(SystemExit, match="unknown"):
        bench_main(["layers", "--quick", "--device", "cpu", "--methods", "nope", "--out", str(tmp_path)])


@pytest.mark.slow
def test_compiled_methods_can_be_selected_on_cpu(tmp_path, keep_threads, capsys):
    """torch.compile runs when asked for (a single tiny case, forward only)."""
    pytest.importorskip("torch._inductor")
    rep = bench_main(["layers", "--device", "cpu", "--layers", "conv16@4", "--rank", "1", "--act", "none",
                      "--mode", "forward", "--methods", "shared,compile-shared", "--compile", "on",
                      "--cpu-reps", "2", "--out", str(tmp_path)])
    assert rep == 0
    recs = json.loads(next(tmp_path.glob("*.json")).read_text())["records"]
    comp = [r for r in recs if r["method"] == "compile-shared"][0]
    if comp["error"] and "compiler" in comp["error"].lower():
        pytest.skip(f"no working C++ toolchain for inductor: {comp['error']}")
    assert comp["median_ms"] > 0 and comp["rel_err"] < 1e-5


def test_percentiles_and_cpu_timer():
    assert common.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.2) == pytest.approx(1.8)
    t = common.time_cpu(lambda i: i, 2, warmup=1, reps=3, setup=lambda i: i)
    assert t.reps == 3 and t.p20_ms <= t.median_ms <= t.p80_ms


def test_python_m_bench_lists_subcommands():
    proc = subprocess.run([sys.executable, "-m", "bench", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and all(c in proc.stdout for c in ("layers", "e2e", "onnx"))


def test_onnx_subcommand_dispatches():
    with pytest.raises(SystemExit) as exc:
        bench_main(["onnx", "--help"])
    assert exc.value.code == 0
