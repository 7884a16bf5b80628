"""python -m bench near: how near each task's shots lie to what the base already makes (the near check's gap).

    python -m bench near --real DATA [--tasks test|validation|NAME,...] [--seeds 0,1,2] [--draws N] [--base emoji32]
                         [--runs runs/quality] [--name NAME] [--out DIR] [--overwrite] [--no-progress]

For every task and shot seed (the shots `bench quality` trains on: seed 0 is DATA/<task>/train, other seeds are
drawn from the full set and copied under RUNS/shots), the KID x 10^3 between the shots and 1000 samples of the base,
as `colorgan train --near-anchor` measures it before the first task, and whether it lies below the threshold
(near: the task trains with its style and mapping anchors raised). The threshold was chosen from this table on the
validation tasks (docs/benchmarks.md, round 28).
With --draws N, also each task's gap over the draws of shot seeds 1..N (the shots `bench quality` would train on
for those seeds, scored from the full set's features without copying them): its mean, 10th/50th/90th percentiles
and the share of draws the check calls near. Ten shots are a small sample: the share says how often a task of
that kind is caught (docs/benchmarks.md, round 31).
Each set of shots also gets its *spread*: the mean pairwise squared distance between the shots' Inception features
over the same mean between the base's samples (1: the shots vary as much as what the base makes; below 1: narrower
content, as a category's shots might be; docs/benchmarks.md, round 37).
Writes bench/results/<device>-<date>-<name>.{json,md} (name default near-<tasks>).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

import fastlora
from bench import common
from bench.quality import select_tasks, shot_folders
from bench.quality_scores import inception_path
from colorgan.checkpoint import load_checkpoint, resolve_checkpoint
from colorgan.data.emoji import choose_shots, read_manifest
from colorgan.data.folder import list_images
from colorgan.metrics.features import FeatureNetwork, folder_features
from colorgan.train import near


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench near", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", required=True, help="data root of `colorgan data emoji --size 32`")
    p.add_argument("--base", default="emoji32", help="base checkpoint folder or shipped base (default emoji32)")
    p.add_argument("--tasks", default="test", help="'test' or 'validation' (the tasks of that role in the data's "
                                                   "manifest), or task names (default test)")
    p.add_argument("--seeds", default="0,1,2", help="shot seeds (seed 0: DATA/<task>/train; default 0,1,2)")
    p.add_argument("--draws", type=int, default=0, help="also the gap over the draws of shot seeds 1..N from each "
                                                         "task's full set: mean, percentiles, share near (default 0)")
    p.add_argument("--runs", default="runs/quality", help="where shots of seeds other than 0 are copied (default "
                                                          "runs/quality, shared with bench quality)")
    p.add_argument("--inception", default=None, help="Inception network file (default: found automatically)")
    p.add_argument("--name", default=None, help="result name (default near-<tasks>)")
    p.add_argument("--out", default=None, help=f"results folder (default {common.RESULTS_DIR})")
    p.add_argument("--overwrite", action="store_true", help="replace existing result files of the same name")
    p.add_argument("--no-progress", action="store_true")
    return p


def markdown(report: dict) -> str:
    seeds = report["seeds"]
    lines = [f"Gap: KID×10³ between each task's {report['shots']} shots and {report['base_samples']} samples of the "
             f"base ({report['base']}); near (bold) below {report['threshold']:g}: the task trains with its style "
             f"and mapping anchors at least `--near-anchor`. `{report['command']}`", "",
             "| task (kind) | " + " | ".join(f"seed {s}" for s in seeds) + " | near |",
             "|---|" + "---|" * (len(seeds) + 1)]
    for t, row in report["tasks"].items():
        cells = ["-" if g is None else f"**{g:.1f}**" if near.is_near(g) else f"{g:.1f}" for g in row["gaps"]]
        lines.append(f"| {t} ({row['kind']}) | " + " | ".join(cells) + f" | {sum(row['near'])} of {len(seeds)} |")
    lines += ["", "Spread: the shots' mean pairwise squared feature distance over the base samples' (1: as varied as "
              "the base's samples).", "", "| task (kind) | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "|---|" + "---|" * len(seeds)]
    lines += [f"| {t} ({row['kind']}) | " + " | ".join("-" if v is None else f"{v:.3f}" for v in row["spreads"]) + " |"
              for t, row in report["tasks"].items()]
    draws = {t: row["draws"] for t, row in report["tasks"].items() if "draws" in row}
    if draws:
        n = len(next(iter(draws.values()))["gaps"])
        lines += ["", f"Over the draws of shot seeds 1–{n} ({report['shots']} shots each, from the task's full set):",
                  "", "| task (kind) | mean gap | 10th / 50th / 90th percentile | share near | mean spread: all / "
                  "near draws |", "|---|---|---|---|---|"]
        for t, d in draws.items():
            p10, p50, p90 = np.percentile(d["gaps"], [10, 50, 90])
            caught = [v for g, v in zip(d["gaps"], d["spreads"]) if near.is_near(g)]
            lines.append(f"| {t} ({report['tasks'][t]['kind']}) | {np.mean(d['gaps']):.1f} | {p10:.1f} / {p50:.1f} / "
                         f"{p90:.1f} | {d['near_share']:.2f} | {np.mean(d['spreads']):.3f} / "
                         + (f"{np.mean(caught):.3f} |" if caught else "- |"))
    return "\n".join(lines) + "\n"


def mean_sq_distance(feats: np.ndarray) -> Optional[float]:
    """Mean squared Euclidean distance over the pairs of distinct rows (float64); None for fewer than two rows."""
    x = np.asarray(feats, dtype=np.float64)
    n = x.shape[0]
    if n < 2:
        return None
    sq = (x * x).sum(1)
    total = 2.0 * n * sq.sum() - 2.0 * float(x.sum(0) @ x.sum(0))  # sum over ordered pairs of |xi - xj|^2
    return total / (n * (n - 1))


def spread(shots: np.ndarray, base_msd: float) -> Optional[float]:
    """The shots' spread: their mean pairwise squared feature distance over the base samples' (`base_msd`)."""
    msd = mean_sq_distance(shots)
    return None if msd is None else msd / base_msd


def draw_gaps(full: Path, task: str, draws: int, shots: int, base: np.ndarray, base_msd: float, net: FeatureNetwork,
              resolution: int, progress: bool) -> tuple[list[Optional[float]], list[Optional[float]]]:
    """The gap and the spread (`base_msd`: the base features' mean squared distance) of the shots `bench quality`
    draws for seeds 1..`draws` from the images in `full` (the task's full set), from the full set's features
    (cached)."""
    feats = folder_features(full, net, resolution, progress=progress)
    row = {p.stem: i for i, p in enumerate(list_images(full))}
    picked = [feats[[row[i] for i in choose_shots(list(row), shots, s, task)]] for s in range(1, draws + 1)]
    return [near.gap(f, base) for f in picked], [spread(f, base_msd) for f in picked]


def run_near(args: argparse.Namespace) -> dict:
    real, runs, base = Path(args.real), Path(args.runs), resolve_checkpoint(args.base)
    manifest = read_manifest(real)
    tasks = select_tasks(manifest, args.tasks)
    try:
        seeds = common.parse_list(args.seeds, int) or [0]
    except ValueError:
        raise SystemExit(f"--seeds takes shot seeds (e.g. 0,1,2), got {args.seeds!r}") from None
    if any(s < 0 for s in seeds):
        raise SystemExit(f"--seeds takes shot seeds >= 0, got {args.seeds!r}")
    if args.draws < 0:
        raise SystemExit(f"--draws takes a number of shot draws >= 0, got {args.draws}")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    stem = common.result_stem(args.out, dev, args.name or f"near-{args.tasks.replace(',', '-')}")
    common.check_writable(stem, (".json", ".md"), args.overwrite)
    net = FeatureNetwork(inception_path(args.inception), dev)
    G = load_checkpoint(base, dev)[0]
    base_feats = near.base_features(G, net, fastlora.base_checksum(G), progress=not args.no_progress)
    shots = {s: shot_folders(real, runs, tasks, s, manifest["shots"]) for s in seeds}
    base_msd = mean_sq_distance(base_feats)
    rows = {}
    for t in tasks:
        feats = [near.shot_features(shots[s][t], net, G.size) for s in seeds]
        gaps = [near.gap(f, base_feats) for f in feats]
        rows[t] = {"kind": manifest["tasks"][t].get("kind", "?"), "gaps": gaps, "near": [near.is_near(g) for g in gaps],
                   "spreads": [spread(f, base_msd) for f in feats]}
        if args.draws:
            dg, ds = draw_gaps(real / t / "full", t, args.draws, manifest["shots"], base_feats, base_msd, net,
                               G.size, not args.no_progress)
            rows[t]["draws"] = {"seeds": list(range(1, args.draws + 1)), "gaps": dg, "spreads": ds,
                                "near_share": sum(map(near.is_near, dg)) / len(dg)}
    command = "python -m bench near " + shlex.join(args.argv)
    report = {"environment": common.environment(dev, command), "command": command, "base": str(base),
              "real": str(real), "seeds": seeds, "shots": manifest["shots"], "base_samples": near.BASE_SAMPLES,
              "threshold": near.NEAR_GAP, "tasks": rows}
    paths = common.write_outputs(stem, report, markdown(report))
    print(markdown(report))
    print("wrote " + ", ".join(map(str, paths)))
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    run_near(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
