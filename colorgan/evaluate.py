"""Evaluate a checkpoint's tasks: generate fixed-seed samples per task and score them against real images."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import torch

from colorgan.checkpoint import load_checkpoint, read_checkpoint_config
from colorgan.data.folder import list_images
from colorgan.generate import BASE, activate, apply_strengths, render, resolve_tasks
from colorgan.metrics import evaluate_images
from fastlora.io import load_json


DEFAULT_N = 5000  # fakes per task: the published protocol


def real_folders(real: Union[str, os.PathLike], task: str, shots: Optional[str]) -> tuple[Path, Optional[Path]]:
    """The real set (and shots) of `task`: `real/<task>/full` (with `real/<task>/train` as the shots;
    `real/source` for the base) in a data root written by `colorgan data emoji`, else `real` itself."""
    root = Path(real)
    if not root.is_dir():
        raise FileNotFoundError(f"real image folder {root} does not exist")
    if task == BASE and (root / "source").is_dir():
        return root / "source", Path(shots) if shots else None
    full, train = root / task / "full", root / task / "train"
    if full.is_dir():
        return full, Path(shots) if shots else (train if train.is_dir() else None)
    try:
        list_images(root)
    except (FileNotFoundError, ValueError):
        raise FileNotFoundError(f"{root} holds no images and no {task}/full folder; pass the task's real folder "
                                f"or a data root built by `colorgan data emoji`") from None
    return root, Path(shots) if shots else None


def sample_batches(G, task: Optional[str], n: int, batch: int, truncation: float) -> Iterator[torch.Tensor]:
    """Images of seeds 0..n-1 under `task` (the same images `colorgan generate` writes), in batches, in [-1, 1]."""
    activate(G, task)
    center = G.task_w_avg() if (truncation != 1 and task is not None) else None
    for start in range(0, n, batch):
        seeds = list(range(start, min(n, start + batch)))
        with torch.inference_mode():
            yield render(G, task, seeds, truncation=truncation, center=center).clamp(-1, 1).float().cpu()


def evaluate_checkpoint(ckpt: Union[str, os.PathLike], tasks: Union[str, Sequence[str]], real: Union[str, os.PathLike],
                        *, n: int = DEFAULT_N, truncation: float = 1.0, shots: Optional[str] = None,
                        batch_size: int = 32, device: str = "cpu", lpips=None,
                        strengths: Optional[Mapping[str, float]] = None, **metric_kw: Any) -> dict:
    """Scores of every requested task of a checkpoint: {"tasks": {name: evaluate_images result}, ...}.
    `strengths`: {task: s} scores those tasks at strength s instead of their saved one (recorded as "strengths")."""
    if n < 2:
        raise ValueError(f"n must be at least 2 samples per task, got {n}")
    cfg = read_checkpoint_config(ckpt)
    available = [e["name"] for e in cfg["tasks"]]
    names = resolve_tasks(tasks, available)
    G, _, _ = load_checkpoint(ckpt, device, tasks=[t for t in names if t != BASE], load_d=False)
    out: dict = {"ckpt": str(ckpt), "n": n, "truncation": truncation, "tasks": {}}
    applied = apply_strengths(G, strengths, names, available)
    if applied:
        out["strengths"] = applied
    for name in names:
        full, shot_dir = real_folders(real, name, shots)
        use_lpips = lpips if shot_dir is not None else None
        res = evaluate_images(sample_batches(G, None if name == BASE else name, n, batch_size, truncation), full,
                              n_fake=n, shots_dir=shot_dir, lpips=use_lpips, batch_size=batch_size, device=device,
                              **metric_kw)
        if lpips is not None and shot_dir is None:
            res.setdefault("warnings", []).append(f"LPIPS skipped for {name}: no training shots folder "
                                                  f"(pass --shots or a data root with {name}/train)")
        out["tasks"][name] = res
    return out


def fid_kid(ckpt: Union[str, os.PathLike], task: str, real: Union[str, os.PathLike], n: int,
            **kw: Any) -> dict[str, float]:
    """FID, KID mean and KID std of one task (or "base") of a checkpoint: the summary that the demo and
    `bench quality` report."""
    r = evaluate_checkpoint(ckpt, task, real, n=n, **kw)["tasks"][task]
    return {"fid": r["fid"], "kid": r["kid_mean"], "kid_std": r["kid_std"]}


def evaluate_run(run: Union[str, os.PathLike], real: Union[str, os.PathLike], *, n: int = DEFAULT_N,
                 truncation: float = 1.0, **metric_kw: Any) -> dict:
    """The forgetting table of a `colorgan train` run: every seen task's scores after each task was learned.

    Adapter methods keep one bank whose earlier adapters are never touched again, so task i scores the
    same after every later task: each task is scored once from the bank and its column repeated.
    Full fine-tuning methods (ewc, distill) keep one generator per task (RUN/checkpoints/<t>): the
    generator after task t is scored on every task learned so far.
    """
    run = Path(run)
    summary = load_json(run / "summary.json")
    if summary.get("kind") != "train":
        raise ValueError(f"{run} is not a `colorgan train` run (summary kind {summary.get('kind')!r})")
    tasks = list(summary.get("tasks", []))
    table: dict[str, dict[str, dict]] = {}
    if "checkpoint" in summary:  # one adapter bank
        scores = evaluate_checkpoint(run / "checkpoint", tasks, real, n=n, truncation=truncation, **metric_kw)
        for t_i, after in enumerate(tasks):
            table[after] = {task: scores["tasks"][task] for task in tasks[: t_i + 1]}
    else:
        for t_i, after in enumerate(tasks):
            ckpt = run / "checkpoints" / after
            table[after] = {}
            for task in tasks[: t_i + 1]:
                full, shots = real_folders(real, task, None)
                res = evaluate_checkpoint(ckpt, BASE, full, n=n, truncation=truncation, shots=shots, **metric_kw)
                table[after][task] = res["tasks"][BASE]
    return {"run": str(run), "method": summary.get("method"), "tasks": tasks, "n": n, "after": table}


def format_forgetting(result: dict, metric: str = "fid") -> str:
    """Rows: after learning task t; columns: every task; cells: the metric (blank before the task is learned)."""
    tasks = result["tasks"]
    w = max(12, *(len(t) + 2 for t in tasks))
    head = "after \\ task".ljust(w) + "".join(t.rjust(w) for t in tasks)
    lines = [f"{metric.upper()} per task after each task was learned ({result['method']})", head]
    for after in tasks:
        row = result["after"].get(after, {})
        cells = [(f"{row[t][metric]:.2f}" if t in row and row[t].get(metric) is not None else "") for t in tasks]
        lines.append(after.ljust(w) + "".join(c.rjust(w) for c in cells))
    return "\n".join(lines)
