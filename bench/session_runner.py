"""The GPU session's runner: runs each step against its deadline and writes the step's file and the summary
(`python -m bench gpu-session`, bench.session, is the command; bench.session_steps the steps)."""
from __future__ import annotations

import datetime as _dt
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

FILES = {"env": "env.json", "tests": "tests.json", "warmup": "warmup.json", "layers": "layers.json",
         "e2e": "e2e.json", "onnx": "onnx.json"}
SUMMARY, PLOT = "summary.md", "layers.png"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def session_folder(out_root: Path, slug: str, dry: bool) -> Path:
    """out_root/<slug>-<date>[-dry], or with -2, -3, ... when that folder already holds files."""
    name = f"{slug}-{_dt.date.today().isoformat()}" + ("-dry" if dry else "")
    folder, n = out_root / name, 1
    while folder.exists() and any(folder.iterdir()):
        n += 1
        folder = out_root / f"{name}-{n}"
    return folder


class Session:
    """Runs the steps against a clock and writes each step's file."""

    def __init__(self, folder: Path, budget_s: float, steps: Sequence[str], plan, dev, dry: bool, command: str):
        from bench import session_plan

        self.folder, self.budget_s, self.steps, self.plan, self.dev, self.dry = (folder, budget_s, list(steps), plan,
                                                                                 dev, dry)
        self.command = command
        self.t0 = time.monotonic()
        self.deadlines = session_plan.deadlines(budget_s, self.steps)
        self.status: Dict[str, dict] = {}
        self.env: dict = {}

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def deadline(self, step: str) -> float:
        """The step's deadline as a time.monotonic() value."""
        return self.t0 + self.deadlines[step]

    def run(self, step: str, fn: Callable[[float], dict]) -> Optional[dict]:
        from bench import common

        start = self.elapsed()
        log(f"[{start:6.1f} s] {step} (until {self.deadlines[step]:.0f} s)")
        try:
            payload = fn(self.deadline(step))
            status = payload.pop("status", "ok")
        except Exception as exc:  # one failing step must not cost the others
            payload = {"error": f"{type(exc).__name__}: {exc}"[:1000], "traceback": traceback.format_exc()[-4000:]}
            status = "error"
            log(f"  {step} failed: {payload['error']}")
        wall = self.elapsed() - start
        self.status[step] = {"status": status, "started_s": round(start, 1), "wall_s": round(wall, 1),
                             "deadline_s": round(self.deadlines[step], 1)}
        doc = {"step": step, **self.status[step], **payload, **self.header()}
        common.write_json(self.folder / FILES[step], doc)
        self.write_summary()
        return doc

    def header(self) -> dict:
        e = self.env
        return {"device": e.get("device"), "torch": e.get("torch"), "triton": e.get("triton"),
                "dry_run": self.dry}

    def write_summary(self) -> None:
        from bench import common, session_report

        try:
            common.write_text(self.folder / SUMMARY, session_report.summary(self.folder))
        except Exception as exc:  # the summary is a convenience; the JSON files are the record
            log(f"  summary.md not written: {type(exc).__name__}: {exc}")
