"""Quality benchmark: adapt a base to the emoji demo tasks with each adapter configuration, score every
task on its full set against the unadapted base, and check that earlier tasks are not forgotten.

    python -m bench quality --real DATA [--base emoji32] [--configs default,published,left] [--iter 1000]
                            [--n 500] [--n-source 1000] [--runs runs/quality] [--out DIR] [--overwrite]

DATA is a `colorgan data emoji --size 32` root (DATA/source, DATA/<task>/full). Configurations, all with
`colorgan train --method color` (the same loop, seeds, shots and iterations; the shipped 10-shot folders,
learned in the order flags, openmoji, twemoji):
  default    LLoRA with the inner ReLU and the corrected alpha routing (the `colorgan train` defaults)
  published  LLoRA as published: both ReLUs (--use_act) and the upstream alpha routing (--compat upstream)
  left       LFS-GAN's LeFT adapters (--kind left) in the same loop
Scores: FID and KID (Inception-v3, fakes from seeds 0..n-1 without truncation) of every task against its full
set, of the unadapted base against each task's full set, and of the base against the source set. Forgetting:
after each task the run renders every task learned so far on fixed latents (RUN/samples/after_<task>.png);
the rows of task t after the last task must equal (max abs pixel difference 0) its rows right after task t.
Finished runs in --runs are reused when their configuration matches, so an interrupted benchmark resumes; the
training configuration is the demo's, so `colorgan demo`'s RUN/run can serve as --runs/default.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from bench import common

CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "published": {"act": "both", "compat": "upstream"},
    "left": {"kind": "left"},
}


def _run(cfg, folder: Path, progress: bool) -> dict:
    """Train into `folder`, or reuse a finished run there with the same configuration."""
    from colorgan.train.continual import train
    from colorgan.train.pretrain import RunOptions

    summary = folder / "summary.json"
    if summary.is_file():
        done = json.loads(summary.read_text())
        saved = json.loads((folder / "config.json").read_text())
        wanted = json.loads(json.dumps(asdict(cfg), default=str))
        if all(saved.get(k) == v for k, v in wanted.items() if k != "tasks"):
            print(f"reusing the finished run {folder}")
            return done
        raise SystemExit(f"{folder} holds a run with another configuration; remove it or choose --runs")
    if folder.exists():
        raise SystemExit(f"{folder} holds an unfinished run: finish it with `colorgan train --resume {folder}` "
                         f"(then rerun this benchmark) or remove it")
    return train(cfg, folder, options=RunOptions(progress=progress))


def forgetting(run: Path, tasks: Sequence[str]) -> dict[str, float]:
    """Max abs pixel difference of each task's rows between the grid right after it and the final grid."""
    from PIL import Image

    final = np.asarray(Image.open(run / "samples" / f"after_{tasks[-1]}.png"), dtype=np.int16)
    out = {}
    for t in tasks:
        early = np.asarray(Image.open(run / "samples" / f"after_{t}.png"), dtype=np.int16)
        out[t] = float(np.abs(final[: early.shape[0]] - early).max())
    return out


def run_bench(base: str, real: str, configs: Sequence[str], iters: int, n: int, n_source: int, runs: Path,
              inception: str, seed: int = 0, progress: bool = True, out_dir: Optional[str] = None,
              overwrite: bool = False) -> dict:
    import torch

    from colorgan.checkpoint import read_checkpoint_config
    from colorgan.demo import demo_task_dirs, demo_train_config
    from colorgan.evaluate import fid_kid, real_folders

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # training picks the same device
    stem = common.result_stem(out_dir, dev, "quality")
    common.check_writable(stem, (".json", ".md"), overwrite)
    read_checkpoint_config(base)
    tasks = demo_task_dirs()
    for t in tasks:
        real_folders(real, t, None)  # every full set exists before hours of work start
    kw = dict(inception=inception, progress=progress, device=str(dev))

    def scores(ckpt, task, folder, count):
        return fid_kid(ckpt, task, folder, count, **kw)

    report: dict[str, Any] = {"environment": common.environment(dev), "base": str(base), "real": str(real),
                              "iter": iters, "n": n, "n_source": n_source, "tasks": list(tasks), "configs": {}}
    t0 = time.perf_counter()
    report["base_vs_source"] = scores(base, "base", real, n_source)
    report["base_vs_task"] = {t: scores(base, "base", real_folders(real, t, None)[0], n) for t in tasks}
    for name in configs:
        folder = runs / name
        summary = _run(demo_train_config(base, tasks, iters, seed, **CONFIGS[name]), folder, progress)
        ckpt = folder / "checkpoint"
        cfg = read_checkpoint_config(ckpt)
        stored = {e["name"]: e["stored_params"] for e in cfg["tasks"]}
        report["configs"][name] = {
            "overrides": CONFIGS[name], "run": str(folder), "seconds": summary.get("seconds", {}),
            "stored_params": stored, "generator_params": cfg["base"]["generator_params"],
            "scores": {t: scores(ckpt, t, real, n) for t in tasks},
            "forgetting_max_abs_pixel_diff": forgetting(folder, list(tasks)),
        }
    report["seconds"] = time.perf_counter() - t0
    report["files"] = [str(p) for p in common.write_outputs(stem, report, markdown(report))]
    return report


def markdown(r: dict) -> str:
    """FID / KID×10³ per task: the unadapted base and each configuration (lower is better)."""
    names = list(r["configs"])
    head = "| task | base | " + " | ".join(names) + " |"
    lines = [f"Quality on the full sets: FID / KID×10³ (n = {r['n']} fakes, {r['iter']} iterations per task); "
             f"lower is better", "", head, "|" + "---|" * (2 + len(names))]
    for t in r["tasks"]:
        b = r["base_vs_task"][t]
        cells = [f"{c['scores'][t]['fid']:.1f} / {1e3 * c['scores'][t]['kid']:.1f}" for c in r["configs"].values()]
        lines.append(f"| {t} | {b['fid']:.1f} / {1e3 * b['kid']:.1f} | " + " | ".join(cells) + " |")
    s = r["base_vs_source"]
    lines += ["", f"Base against the source set: FID {s['fid']:.1f}, KID×10³ {1e3 * s['kid']:.1f} "
                  f"(n = {r['n_source']} fakes)", "",
              "| config | stored parameters per task | seconds per task | forgetting (max abs pixel diff) |",
              "|---|---|---|---|"]
    for name, c in r["configs"].items():
        st = ", ".join(f"{t} {c['stored_params'][t]:,}" for t in r["tasks"])
        secs = ", ".join(f"{t} {c['seconds'].get(t, float('nan')):.0f}" for t in r["tasks"])
        fg = ", ".join(f"{t} {v:g}" for t, v in c["forgetting_max_abs_pixel_diff"].items())
        lines.append(f"| {name} | {st} | {secs} | {fg} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    from colorgan.metrics.features import default_inception

    p = argparse.ArgumentParser(prog="python -m bench quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--real", required=True, help="data root of `colorgan data emoji --size 32`")
    p.add_argument("--base", default="emoji32", help="base checkpoint folder or shipped base (default emoji32)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    p.add_argument("--iter", type=int, default=1000, help="iterations per task (default 1000: the CPU demo budget)")
    p.add_argument("--n", type=int, default=500, help="fakes per task score (default 500)")
    p.add_argument("--n-source", type=int, default=1000, help="fakes for the base-vs-source score (default 1000)")
    p.add_argument("--runs", default="runs/quality", help="folder of the training runs (reused when finished)")
    p.add_argument("--inception", default=None, help="Inception file (default $COLORGAN_INCEPTION, else "
                                                     "~/.cache/colorgan/inception-fid.pt)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help=f"results folder (default {common.RESULTS_DIR})")
    p.add_argument("--overwrite", action="store_true", help="replace today's results file")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    configs = common.parse_list(args.configs) or []
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or not configs:
        p.error(f"--configs must name some of {', '.join(CONFIGS)}, got {args.configs!r}")
    if args.iter < 1 or args.n < 2 or args.n_source < 2:
        p.error("--iter must be >= 1 and --n, --n-source >= 2")
    inception = args.inception or default_inception()
    if not inception:
        p.error("no Inception file: pass --inception PATH (see `colorgan eval --help`)")
    report = run_bench(args.base, args.real, configs, args.iter, args.n, args.n_source, Path(args.runs), inception,
                       seed=args.seed, progress=not args.no_progress, out_dir=args.out, overwrite=args.overwrite)
    print()
    print(markdown(report))
    print("wrote " + ", ".join(report["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
