"""python -m bench roles: what each adapter role of a trained task contributes at sampling time.

    python -m bench roles --ckpt RUN/checkpoint --task NAME --real REFERENCE_DIR [--roles mapping,style,conv]
                          [--scales 0.75,0.5] [--mean-shift] [--task-scales 0.25,0.5,0.75] [--shots DIR]
                          [--n 300] [--ref-max 1000] [--name NAME] [--out DIR] [--overwrite]

Samples the task (seeds 0..n-1, as `bench quality` does) with everything on, then with one role's adapters put
back to the identity at a time ("mapping": the mapping network, "style": the style affines, "conv": the
convolutions), then with all of them (the base), and scores each against the reference images by FID/KID.
With --scales, each role is also sampled with that fraction of its adapters' effect kept ("mapping ×0.5": every
mapping layer's weight halfway between the base's and the task's), between the role switched off (0) and the task
as trained (1).
With --mean-shift, one more row: the mapping adapters replaced by their mean effect on w ("mapping mean shift":
the base's mapping, every w moved by the task's mean w minus the base's over the truncation centre's fixed z).
With --task-scales, rows with every role kept at that fraction ("task ×0.5"; --roles may then be empty: "").
With --shots (the task's training images), every row is also scored by KID against them, and the report names the
"shot pick": of the base, the task ×s rows and the task, the one whose samples lie nearest the shots by that KID
(ties: the larger fraction), as `colorgan train --strength auto` picks (docs/benchmarks.md, round 38).
Writes bench/results/<device>-<date>-<name>.{json,md} (name default roles-<task>).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from bench import common
from bench.quality_scores import RESOLUTION, Scorer, inception_path, scores
from colorgan.train import near, strength

ROLES = ("mapping", "style", "conv")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench roles", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint folder holding the task (e.g. RUN/checkpoint)")
    p.add_argument("--task", required=True, help="the task to sample")
    p.add_argument("--real", required=True, help="the task's reference images (a folder)")
    p.add_argument("--roles", default=",".join(ROLES), help=f"roles switched off one at a time (of {ROLES})")
    p.add_argument("--scales", default="",
                   help="also sample each role with these fractions of its adapters' effect kept (e.g. 0.75,0.5)")
    p.add_argument("--mean-shift", action="store_true",
                   help="also sample with the mapping adapters replaced by their mean effect on w")
    p.add_argument("--task-scales", default="",
                   help="also sample with every role kept at these fractions of its effect (e.g. 0.25,0.5,0.75)")
    p.add_argument("--shots", default=None,
                   help="the task's training images: also score every row by KID against them and name the pick")
    p.add_argument("--n", type=int, default=300, help="samples per row (default 300)")
    p.add_argument("--ref-max", type=int, default=1000,
                   help="at most this many reference images, a fixed seeded subset (0: all; default 1000)")
    p.add_argument("--inception", default=None, help="Inception network file (default: found automatically)")
    p.add_argument("--name", default=None, help="result name (default roles-<task>)")
    p.add_argument("--out", default=None, help="result folder (default bench/results)")
    p.add_argument("--overwrite", action="store_true", help="replace existing result files of the same name")
    p.add_argument("--no-progress", action="store_true")
    return p


def run_roles(args: argparse.Namespace) -> dict:
    roles = common.parse_list(args.roles) or []
    fractions, task_fractions = parse_fractions(args.scales, "--scales"), parse_fractions(args.task_scales,
                                                                                           "--task-scales")
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not (roles or task_fractions):
        raise SystemExit(f"--roles takes some of {', '.join(ROLES)}, got {args.roles!r}")
    ckpt, real = Path(args.ckpt), Path(args.real)
    for flag, folder in (("--real", real), ("--shots", args.shots)):
        if folder is not None and not Path(folder).is_dir():
            raise SystemExit(f"{flag}: no folder {folder}")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    stem = common.result_stem(args.out, dev, args.name or f"roles-{args.task}")
    common.check_writable(stem, (".json", ".md"), args.overwrite)
    scorer = Scorer(inception_path(args.inception), str(dev), progress=not args.no_progress)
    ref = scorer.folder(real, limit=args.ref_max or None)
    rows: dict[str, dict] = {}
    plan = [("task", (), 0.0, False), *((f"without {r}", (r,), 0.0, False) for r in roles),
            *((f"{r} ×{s:g}", (r,), s, False) for r in roles for s in fractions),
            *([("mapping mean shift", (), 0.0, True)] if args.mean_shift else []),
            *((f"task ×{s:g}", ROLES, s, False) for s in task_fractions), ("base", tuple(ROLES), 0.0, False)]
    try:
        shots = None if args.shots is None else near.shot_features(args.shots, scorer.net, RESOLUTION)
    except (ValueError, OSError, RuntimeError) as exc:
        raise SystemExit(f"--shots {args.shots}: cannot read the shots: {exc}") from None
    if shots is not None and shots.shape[0] < 2:
        raise SystemExit(f"--shots {args.shots}: KID needs at least 2 images, the folder has {shots.shape[0]}")
    for label, off, scale, shift in plan:
        try:
            fake = scorer.generated(ckpt, args.task, args.n, off=off, scale=scale, mean_shift=shift)
        except (KeyError, ValueError, OSError) as exc:
            raise SystemExit(f"{ckpt}: cannot sample task {args.task!r}: {exc}") from None
        rows[label] = scores(fake, ref)
        if shots is not None:
            rows[label]["shot_kid"] = strength.shot_kid(fake, shots)
    command = "python -m bench roles " + shlex.join(args.argv)
    report = {"environment": common.environment(dev, command), "command": command, "ckpt": str(ckpt),
              "task": args.task, "real": str(real), "n": args.n, "n_ref": int(ref.shape[0]), "rows": rows}
    if shots is not None:
        report["shots"], report["shot_pick"] = str(args.shots), shot_pick(rows, task_fractions)
    against = "" if shots is None else f"; shot KID: against the {shots.shape[0]} images of {args.shots}"
    lines = [f"FID / KID×10³ of task `{args.task}` ({ckpt}) against {real} ({ref.shape[0]} images), n = {args.n}; "
             f"each row puts the named role's adapters back to the identity (×s: keeps that fraction of their "
             f"effect; mean shift: the mapping adapters replaced by their mean effect on w){against}. `{command}`",
             "", "| sampled | FID | KID×10³ (std) |" + (" shot KID×10³ |" if shots is not None else ""),
             "|---|---|---|" + ("---|" if shots is not None else "")]
    lines += [f"| {k} | {v['fid']:.1f} | {1e3 * v['kid']:.1f} ({1e3 * v['kid_std']:.1f}) |"
              + (f" {1e3 * v['shot_kid']:.1f} |" if shots is not None else "") for k, v in rows.items()]
    if shots is not None:
        lines += ["", f"Shot pick: {report['shot_pick']}."]
    paths = common.write_outputs(stem, report, "\n".join(lines) + "\n")
    print("\n".join(lines[2:]))
    print("wrote " + ", ".join(map(str, paths)))
    return report


def parse_fractions(text: str, flag: str) -> list[float]:
    """A comma-separated list of fractions in [0, 1]; exits naming `flag` otherwise."""
    try:
        fractions = common.parse_list(text, float) or []
    except ValueError:
        fractions = None
    if fractions is None or any(not 0.0 <= s <= 1.0 for s in fractions):
        raise SystemExit(f"{flag} takes fractions between 0 and 1 (e.g. 0.75,0.5), got {text!r}")
    return fractions


def shot_pick(rows: dict[str, dict], fractions: Sequence[float]) -> str:
    """Of the base, the task ×s rows and the task, the row with the lowest KID against the shots (ties: the larger
    fraction kept; `colorgan.train.strength.pick`)."""
    by_fraction = {0.0: "base", **{s: f"task ×{s:g}" for s in fractions}, 1.0: "task"}
    return by_fraction[strength.pick({s: rows[label]["shot_kid"] for s, label in by_fraction.items()})]


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    run_roles(args)
    return 0
