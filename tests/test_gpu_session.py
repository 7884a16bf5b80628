"""The one-command GPU session: its dry run on the CPU end to end (every step, the files it leaves, the record
fields), the plan and its estimate, and the README table script on a temporary README."""
from __future__ import annotations

import contextlib
import io
import json
import math
import re
import shutil
import time

import pytest
import torch

from bench import session_plan
from bench.__main__ import main as bench_main

FILES = {"env.json", "tests.json", "warmup.json", "layers.json", "e2e.json", "onnx.json", "summary.md", "layers.png"}
LAYER_FIELDS = {"device", "torch", "triton", "layer", "batch", "rank", "act", "dtype", "mode", "method", "median_ms",
                "peak_mb", "rel_err", "layout", "skipped", "error"}
INTERPRETING = torch.cuda.is_available() is False  # tests/conftest.py sets TRITON_INTERPRET=1 without CUDA


def _run(argv):
    saved = torch.get_num_threads()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            rc = bench_main(argv)
    finally:
        torch.set_num_threads(saved)
    return rc, out.getvalue()


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    """One dry run shared by the tests below (about 30 s on 2 cores)."""
    root = tmp_path_factory.mktemp("session")
    t0 = time.monotonic()
    rc, stdout = _run(["gpu-session", "--dry-run", "--out", str(root)])
    wall = time.monotonic() - t0
    folders = list(root.iterdir())
    assert rc == 0 and len(folders) == 1
    return folders[0], stdout, wall


def _load(folder, name):
    return json.loads((folder / name).read_text())


@pytest.mark.slow
def test_dry_run_leaves_eight_committable_files(dry):
    folder, stdout, wall = dry
    assert re.fullmatch(r"cpu-\d{4}-\d{2}-\d{2}-dry", folder.name)
    names = {p.name for p in folder.iterdir()}
    assert names == FILES  # the device tool returns at most 8 files
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in names) and all(p.is_file() for p in folder.iterdir())
    for name in names - {"layers.png", "summary.md"}:
        doc = _load(folder, name)
        assert doc["step"] == name[:-5] and doc["status"] == "ok", (name, doc.get("error"), doc.get("traceback"))
        assert doc["dry_run"] is True and doc["device"].startswith("cpu") and doc["torch"] == torch.__version__
    assert (folder / "summary.md").read_text().startswith("# GPU session: cpu")
    assert "| step | status |" in stdout and "files: " in stdout
    from PIL import Image

    with Image.open(folder / "layers.png") as im:
        im.verify()
    assert wall < 120, f"the dry run took {wall:.0f} s"


@pytest.mark.slow
def test_dry_run_env_records_features_plan_and_estimate(dry):
    env = _load(dry[0], "env.json")
    assert {"device", "torch", "triton", "cuda", "driver", "python", "date", "time", "command"} <= set(env["environment"])
    assert {"cuda", "fused", "channels_last", "cuda_graph", "generator_graph", "ort_cuda", "xdist",
            "pytest_timeout"} <= set(env["features"])
    assert all(isinstance(f["available"], bool) and f["how"] for f in env["features"].values())
    assert env["features"]["cuda_graph"]["available"] is False
    assert "tflops" not in env["ceilings"] and env["ceilings"]["skipped"]
    assert env["plan"]["name"] == "dry"
    est = env["estimate"]  # the GPU plan's estimate, for the record
    assert est["total_s"] <= 480 * (1 - session_plan.MARGIN) and est["counts"]["layer_measurements"] > 0
    assert list(env["deadlines_s"]) == list(session_plan.STEPS)


@pytest.mark.slow
def test_dry_run_tests_step_records_every_selected_test(dry):
    t = _load(dry[0], "tests.json")
    outcomes = {x["nodeid"]: x for x in t["tests"]}
    assert t["selected"] == len(outcomes) >= 90 and t["result"] == "passed"
    gpu = [x for n, x in outcomes.items() if "_gpu.py::" in n]
    assert gpu and all(x["outcome"] == "skipped" and "CUDA" in x["message"] for x in gpu)
    for pattern in session_plan.DRY_TESTS:
        assert outcomes[pattern]["outcome"] == "passed"
    assert any(n.startswith("tests/test_generator_gpu.py::") for n in outcomes)


@pytest.mark.slow
def test_dry_run_warmup_runs_every_fused_call(dry):
    w = _load(dry[0], "warmup.json")
    assert w["jobs"] == len(session_plan.layer_cases(session_plan.DRY)) == w["jobs_done"]
    assert all(r["error"] is None and r["first_s"] > 0 for r in w["records"])


@pytest.mark.slow
def test_dry_run_layer_records(dry):
    doc = _load(dry[0], "layers.json")
    recs = doc["records"]
    cases = session_plan.layer_cases(session_plan.DRY)
    assert doc["meta"]["cases_run"] == len(cases) and doc["meta"]["stopped_early"] is None
    assert recs and all(LAYER_FIELDS <= set(r) for r in recs)
    assert {r["method"] for r in recs} == set(session_plan.LAYER_METHODS)
    assert {r["mode"] for r in recs} == {"forward", "fwd+bwd"}
    for r in recs:
        assert r["error"] is None, r
        if r["method"] == "ours-graph":
            assert r["median_ms"] is None and "CUDA" in r["skipped"]
        elif r["method"] == "peft" and r["act"] == "both":
            assert r["median_ms"] is None and "bypass" in r["skipped"]
        elif r["method"] == "ours-heuristic" and not INTERPRETING:
            assert r["median_ms"] is None and r["skipped"]
        else:  # torch paths, and the fused path through the interpreter: fp32 against float64
            assert math.isfinite(r["median_ms"]) and r["median_ms"] > 0, r
            assert 0 <= r["rel_err"] < 1e-5, r


@pytest.mark.slow
def test_dry_run_e2e_and_onnx(dry):
    e2e = _load(dry[0], "e2e.json")["records"]
    assert {(r["kind"], r["method"]) for r in e2e} == {("generate", m) for m in session_plan.E2E_METHODS} | {
        ("train", m) for m in session_plan.E2E_METHODS if m != "ours-graph"}
    for r in e2e:
        if r["method"] == "published":
            assert r["error"] is None and r["median_ms"] > 0 and r["images_per_s"] > 0
            assert r["kind"] == "train" or r["rel_err"] < 1e-4
        else:
            assert r["median_ms"] is None and "CUDA" in r["skipped"]
    onnx = _load(dry[0], "onnx.json")
    assert onnx["parity"]["rel"] < 1e-4
    rows = {(r["path"], r["batch"]): r for r in onnx["rows"]}
    assert rows[("ort-cpu", 1)]["images_per_s"] > 0 and rows[("torch-eager", 2)]["images_per_s"] > 0
    assert rows[("ort-cuda", 1)]["skipped"]


def _fake_sessions(dry_folder, results, times):
    """Copies of the dry run under `results`, marked as GPU sessions recorded at `times`."""
    out = []
    for i, t in enumerate(times):
        dst = results / f"gpu-2026-12-0{i + 1}"
        shutil.copytree(dry_folder, dst)
        env = json.loads((dst / "env.json").read_text())
        env["dry_run"] = False
        env["environment"]["time"] = t
        (dst / "env.json").write_text(json.dumps(env))
        out.append(dst)
    return out


@pytest.mark.slow
def test_readme_table_replaces_between_markers(dry, tmp_path):
    from bench.readme_table import END, START

    results = tmp_path / "results"
    shutil.copytree(dry[0], results / dry[0].name)  # a dry run is never the newest session
    old, new = _fake_sessions(dry[0], results, ["2026-12-01T10:00:00+00:00", "2026-12-02T10:00:00+00:00"])
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\ntext before\n{START}\nstale table\n{END}\ntext after\n")
    args = ["readme-table", "--readme", str(readme), "--results", str(results)]
    assert _run(args + ["--check"])[0] == 1
    rc, out = _run(args)
    assert rc == 0 and new.name in out
    text = readme.read_text()
    assert text.startswith("# title\n\ntext before\n" + START + "\n") and text.endswith(END + "\ntext after\n")
    assert "stale table" not in text and "| layer | fwd b2: ours ms |" in text and new.name in text
    assert old.name not in text and "Correctness pass" in text
    assert _run(args + ["--check"])[0] == 0
    assert "already up to date" in _run(args)[1] and readme.read_text() == text


@pytest.mark.slow
def test_readme_table_prints_without_markers(dry, tmp_path, capsys):
    results = tmp_path / "results"
    _fake_sessions(dry[0], results, ["2026-12-01T10:00:00+00:00"])
    readme = tmp_path / "README.md"
    readme.write_text("# no markers here\n")
    rc, out = _run(["readme-table", "--readme", str(readme), "--results", str(results)])
    assert rc == 0 and "| layer |" in out and readme.read_text() == "# no markers here\n"
    assert "no '<!-- bench-table:start -->'" in capsys.readouterr().err


def test_steps_without_time_left_are_recorded_as_skipped(tmp_path):
    rc, _ = _run(["gpu-session", "--dry-run", "--budget-s", "0.001", "--steps", "layers", "--out", str(tmp_path)])
    folder = next(tmp_path.iterdir())
    assert rc == 0 and {p.name for p in folder.iterdir()} == {"env.json", "layers.json", "summary.md"}
    for name in ("env.json", "layers.json"):
        doc = _load(folder, name)
        assert doc["status"] == "skipped" and doc["reason"].startswith("no time left")


def test_layer_step_stops_at_its_deadline_and_says_so(tmp_path):
    from bench import session_steps
    from bench.session_runner import Session

    session = Session(tmp_path, 10.0, ["layers"], session_plan.DRY, torch.device("cpu"), True, "test")
    session.env = session_steps.environment(session)
    out = session_steps.step_layers(session_steps.Context(session), deadline=time.monotonic() - 1)
    assert out["status"] == "partial" and out["records"] == []
    assert out["meta"]["stopped_early"].startswith("time ran out: 0 of 4 cases measured; not run: conv16@4 b2 r2")


def test_session_refuses_unknown_steps_and_gpu_runs_without_cuda(tmp_path):
    with pytest.raises(SystemExit, match="unknown"):
        bench_main(["gpu-session", "--dry-run", "--steps", "layers,bogus", "--out", str(tmp_path)])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA device"):
            bench_main(["gpu-session", "--out", str(tmp_path)])


def test_gpu_plan_fits_the_budget_by_its_estimate():
    plan = session_plan.GPU
    cases = session_plan.layer_cases(plan)
    assert len(cases) == 17 * 2 * 2 * 2
    assert (cases[0].rank, cases[0].act, cases[0].batch) == (1, "inner", 16) and cases[-1].act == "both"
    n = sum(session_plan.measurements(plan, c) for c in cases)
    assert n == 68 * 11 + 68 * 9  # peft has no form at act both; the graph replays the forward only
    est = session_plan.estimate(plan, dict(session_plan.ASSUMED), 12, 12)
    assert est["counts"]["layer_measurements"] == n
    assert est["total_s"] < 480 * (1 - session_plan.MARGIN)
    for step, limit in session_plan.deadlines(480, session_plan.STEPS).items():  # each step's estimate fits its share
        share = session_plan.SHARES[step] * 480
        assert est["steps_s"][step] < share, (step, est["steps_s"][step], share)
        assert limit <= 480 * (1 - session_plan.MARGIN) + 1e-9
    d = session_plan.deadlines(100, ["layers", "onnx"])
    assert d["layers"] < d["onnx"] == pytest.approx(100 * (1 - session_plan.MARGIN))


def test_calibration_prefers_the_newest_session_of_the_device(tmp_path):
    for name, rate in (("nvidia-h200-2026-12-01", 0.05), ("nvidia-h200-2026-12-03", 0.03), ("cpu-2026-12-04", 9.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "env.json").write_text("{}")
        (tmp_path / name / "layers.json").write_text(json.dumps({"rates": {"layer_s_per_measurement": rate}}))
    units, source = session_plan.calibration(tmp_path, "nvidia-h200")
    assert units["layer_s_per_measurement"] == 0.03 and "2026-12-03" in source
    assert units["kernels"] == session_plan.ASSUMED["kernels"]
    assert session_plan.calibration(tmp_path / "none", "nvidia-h200")[1].startswith("assumed")


def test_test_patterns_take_brackets_literally():
    from bench.pytest_record import matches

    assert matches("tests/a.py::t[llora-both-1-up-fp32]", "tests/a.py::t[llora-both-*-fp32]")
    assert not matches("tests/a.py::t[llora-both-1-up-tf32]", "tests/a.py::t[llora-both-*-fp32]")
    assert not matches("tests/a.py::t[l]", "tests/a.py::t[lo]") and matches("x::channels_last_y", "*channels_last*")


def test_test_results_are_summarised_per_test():
    from bench.session_tests import summarise

    lines = [{"event": "selected", "nodeids": ["a", "b", "c"]},
             {"event": "report", "nodeid": "a", "when": "setup", "outcome": "passed", "duration_s": 0.1},
             {"event": "report", "nodeid": "a", "when": "call", "outcome": "failed", "duration_s": 1.0,
              "message": "assert 1 < 0"},
             {"event": "report", "nodeid": "a", "when": "teardown", "outcome": "passed", "duration_s": 0.0},
             {"event": "report", "nodeid": "b", "when": "setup", "outcome": "skipped", "duration_s": 0.0,
              "message": "needs a CUDA GPU"},
             {"event": "report", "nodeid": "c", "when": "setup", "outcome": "failed", "duration_s": 0.0,
              "message": "fixture broke"}]
    s = summarise(lines)
    assert s["a"]["outcome"] == "failed" and s["a"]["message"] == "assert 1 < 0" and s["a"]["duration_s"] == 1.1
    assert s["b"] == {"outcome": "skipped", "duration_s": 0.0, "message": "needs a CUDA GPU"}
    assert s["c"]["outcome"] == "error"


def test_warmup_groups_stay_in_one_worker():
    from bench import warmup

    jobs = [warmup.layer_job(c.layer, "256", c.batch, c.rank, c.act, c.dtype, False)
            for c in session_plan.layer_cases(session_plan.GPU)]
    jobs.append(warmup.generator_job(256, False, 4, 1, "inner", "bf16", True))
    parts = warmup.assign(jobs, 12)
    assert len(parts) == 12 and sorted(i for p in parts for i in p) == list(range(len(jobs)))
    owner = {i: w for w, p in enumerate(parts) for i in p}
    for i, j in ((i, j) for i in range(len(jobs)) for j in range(i)):
        if warmup.group_key(jobs[i]) == warmup.group_key(jobs[j]):
            assert owner[i] == owner[j]


def test_session_folder_never_mixes_two_sessions(tmp_path):
    from bench.session_runner import session_folder

    a = session_folder(tmp_path, "nvidia-h200", False)
    a.mkdir()
    assert session_folder(tmp_path, "nvidia-h200", False) == a  # empty: reused
    (a / "env.json").write_text("{}")
    b = session_folder(tmp_path, "nvidia-h200", False)
    assert b.name == a.name + "-2"


def test_fused_calls_that_failed_their_warmup_are_left_out(tmp_path):
    """A fused call that failed in a warm-up worker (e.g. an illegal address on the device) is not repeated
    in the session's own process, where a device fault would end every later measurement."""
    import dataclasses

    from bench import session_steps
    from bench.session_runner import Session

    plan = dataclasses.replace(session_plan.DRY, layers=("torgb16@8",), layer_order=((2, "inner"),))
    session = Session(tmp_path, 60.0, ["layers"], plan, torch.device("cpu"), True, "test")
    session.env = session_steps.environment(session)
    job = {"kind": "layer", "layer": "torgb16@8", "batch": 2, "rank": 2, "act": "inner", "dtype": "fp32",
           "error": "RuntimeError: CUDA error: an illegal memory access was encountered"}
    (tmp_path / "warmup.json").write_text(json.dumps({"records": [job]}))
    out = session_steps.step_layers(session_steps.Context(session), deadline=time.monotonic() + 60)
    by = {(r["method"], r["mode"]): r for r in out["records"]}
    assert set(by) == {(m, mode) for m in plan.layer_methods for mode in plan.modes}
    for mode in plan.modes:
        for m in ("ours-heuristic", "ours-graph"):
            assert by[(m, mode)]["median_ms"] is None and "warm-up call failed" in by[(m, mode)]["skipped"]
            assert "illegal memory access" in by[(m, mode)]["skipped"]
        assert by[("merged", mode)]["median_ms"] > 0 and by[("published", mode)]["rel_err"] < 1e-5
