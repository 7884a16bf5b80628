"""pytest plugin of the GPU session's correctness pass: select tests by node-id patterns and record every
result as it comes, one JSON line each, so that a run stopped at its time limit keeps what finished.

Loaded with `-p bench.pytest_record`; does nothing unless COLORGAN_SESSION_TESTS names a JSON file
{"patterns": [...], "marker": "gpu" or null, "extra": [...], "out": "results.jsonl"}: a test is kept when
it matches one of `patterns` (over the whole node id; `*` is the only wildcard, so parameter brackets are
literal) and carries `marker`, or matches one of `extra`;
kept tests run in pattern order. Works under pytest-xdist: workers select, the controller records.
"""
from __future__ import annotations

import json
import os
import re
from typing import List, Optional

ENV = "COLORGAN_SESSION_TESTS"


def _spec(config) -> Optional[dict]:
    path = os.environ.get(ENV)
    if not path:
        return None
    if not hasattr(config, "_colorgan_session_spec"):
        with open(path) as f:
            config._colorgan_session_spec = json.load(f)
    return config._colorgan_session_spec


def matches(nodeid: str, pattern: str) -> bool:
    """Whether `nodeid` matches `pattern`, `*` matching any run of characters (nothing else is special)."""
    return re.fullmatch(".*".join(re.escape(part) for part in pattern.split("*")), nodeid) is not None


def _rank(nodeid: str, patterns: List[str]) -> Optional[int]:
    for i, p in enumerate(patterns):
        if matches(nodeid, p):
            return i
    return None


def _append(path: str, rec: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()


def pytest_collection_modifyitems(session, config, items):
    spec = _spec(config)
    if spec is None:
        return
    patterns, extra, marker = spec["patterns"], spec.get("extra") or [], spec.get("marker")
    n = len(patterns)
    kept, dropped = [], []
    for item in items:
        rank = _rank(item.nodeid, patterns)
        if rank is not None and marker and item.get_closest_marker(marker) is None:
            rank = None
        if rank is None:
            extra_rank = _rank(item.nodeid, extra)
            rank = None if extra_rank is None else n + extra_rank
        (dropped if rank is None else kept).append((rank, item))
    kept.sort(key=lambda ri: ri[0])  # stable: collection order within a pattern
    items[:] = [item for _, item in kept]
    if dropped:
        config.hook.pytest_deselected(items=[item for _, item in dropped])
    worker = getattr(config, "workerinput", None)
    if worker is None or worker.get("workerid") == "gw0":
        _append(spec["out"], {"event": "selected", "nodeids": [item.nodeid for item in items]})


def pytest_configure(config):
    global _RECORD_TO
    spec = _spec(config)
    # xdist workers forward their reports to the controller, which records them once
    _RECORD_TO = spec["out"] if spec is not None and not hasattr(config, "workerinput") else None


_RECORD_TO: Optional[str] = None


def pytest_runtest_logreport(report):
    if _RECORD_TO is None:
        return
    rec = {"event": "report", "nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
           "duration_s": round(float(getattr(report, "duration", 0.0)), 3)}
    if report.skipped and isinstance(report.longrepr, tuple):
        rec["message"] = str(report.longrepr[2])[:500]
    elif report.failed:
        rec["message"] = str(report.longreprtext)[-2000:]
    _append(_RECORD_TO, rec)


def pytest_collectreport(report):
    if _RECORD_TO is not None and report.failed:
        _append(_RECORD_TO, {"event": "collect_error", "nodeid": report.nodeid,
                             "message": str(report.longreprtext)[-1000:]})
