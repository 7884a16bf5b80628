"""`--strength` of the sampling commands (`generate`, `eval --ckpt`, `export`): tasks at another strength than
the one saved with them, for this command only."""
from __future__ import annotations

import argparse
from typing import Optional

from colorgan.checkpoint import read_checkpoint_config
from colorgan.train.per_task import parse_per_task
from colorgan.train.strength import fraction

HELP = ("S or [S,]TASK=S,...: use the tasks at strength S in [0, 1] (the fraction of their trained effect: 0 the "
        "base, 1 as trained) instead of the strength saved with them; the checkpoint is not changed (default: "
        "each task's saved strength)")


def add_strength_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strength", default=None, metavar="SPEC", help=HELP)


def strength_overrides(spec: Optional[str], ckpt: str) -> Optional[dict[str, float]]:
    """{task: strength} for the checkpoint's tasks that `spec` sets (None: no --strength given)."""
    if spec is None:
        return None
    tasks = [e["name"] for e in read_checkpoint_config(ckpt)["tasks"]]
    if not tasks:
        raise ValueError(f"--strength: the checkpoint {ckpt} has no tasks")
    values = parse_per_task("--strength", spec, tasks, None, read=fraction, among="the checkpoint's tasks")
    return {t: s for t, s in values.items() if s is not None}
