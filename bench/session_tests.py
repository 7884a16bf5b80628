"""The GPU session's correctness pass: a chosen subset of the test suite run by pytest in a subprocess with a
time limit, every result recorded (bench.pytest_record) and summarised per test.

The subprocess runs in its own process group: at the time limit the whole group (xdist workers too) is
killed, and the tests that had not reported are listed as not run.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent


def pytest_command(workers: int, per_test_timeout: Optional[int]) -> List[str]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "bench.pytest_record", "-p", "no:cacheprovider",
           "-o", "addopts=", "-rfE",
           "--continue-on-collection-errors", "tests"]
    if workers > 1:
        cmd += ["-n", str(workers)]
    if per_test_timeout:
        cmd += [f"--timeout={per_test_timeout}"]
    return cmd


def summarise(lines: List[dict]) -> Dict[str, dict]:
    """One entry per test: outcome (passed, failed, error, skipped), seconds, message of a failure or skip."""
    tests: Dict[str, dict] = {}
    for rec in lines:
        if rec.get("event") != "report":
            continue
        t = tests.setdefault(rec["nodeid"], {"outcome": None, "duration_s": 0.0, "message": None})
        t["duration_s"] = round(t["duration_s"] + rec["duration_s"], 3)
        when, outcome = rec["when"], rec["outcome"]
        if outcome == "failed":
            if t["outcome"] not in ("failed", "error"):
                t["outcome"] = "failed" if when == "call" else "error"
                t["message"] = rec.get("message")
        elif outcome == "skipped" and t["outcome"] is None:
            t["outcome"], t["message"] = "skipped", rec.get("message")
        elif outcome == "passed" and when == "call" and t["outcome"] is None:
            t["outcome"] = "passed"
    return tests


def run(patterns: List[str], marker: Optional[str], extra: List[str], *, deadline: float, workers: int,
        per_test_timeout: Optional[int], log: Callable[[str], None], env: Optional[dict] = None) -> dict:
    """Run the selected tests until `deadline` (time.monotonic() value); the step's JSON payload."""
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="colorgan-session-tests-") as tmp:
        out = Path(tmp) / "results.jsonl"
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({"patterns": patterns, "marker": marker, "extra": extra, "out": str(out)}))
        cmd = pytest_command(workers, per_test_timeout)
        penv = {**os.environ, **(env or {}), "COLORGAN_SESSION_TESTS": str(spec), "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
        log_path = Path(tmp) / "pytest.log"
        timed_out = False
        with open(log_path, "wb") as logf:
            proc = subprocess.Popen(cmd, cwd=REPO, env=penv, stdout=logf, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                rc: Optional[int] = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = None
        lines = [json.loads(x) for x in out.read_text().splitlines() if x.strip()] if out.exists() else []
        log_tail = log_path.read_text(errors="replace")[-4000:]
    selected: List[str] = next((x["nodeids"] for x in lines if x.get("event") == "selected"), [])
    collect_errors = [{"nodeid": x["nodeid"], "message": x["message"]} for x in lines
                      if x.get("event") == "collect_error"]
    tests = summarise(lines)
    for nodeid in selected:
        if nodeid not in tests or tests[nodeid]["outcome"] is None:
            tests[nodeid] = {**tests.get(nodeid, {"duration_s": 0.0}), "outcome": "not run",
                             "message": "the step's time ran out first" if timed_out else "no result reported"}
    counts: Dict[str, int] = {}
    for t in tests.values():
        counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
    result = "timeout" if timed_out else ("passed" if rc in (0, 5) else "failed")
    log(f"  tests: {counts} ({result}, {time.monotonic() - t0:.0f} s)")
    return {"result": result, "returncode": rc, "command": " ".join(cmd[1:]), "workers": workers,
            "per_test_timeout_s": per_test_timeout, "patterns": patterns, "marker": marker, "extra": extra,
            "selected": len(selected), "counts": counts, "collect_errors": collect_errors,
            "tests": [{"nodeid": k, **v} for k, v in tests.items()], "log_tail": log_tail}
