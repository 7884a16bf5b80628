"""`colorgan train`: continual few-shot adaptation, one task after another, on a frozen base."""
from __future__ import annotations

import argparse

from colorgan.commands._run import add_run_options, cli_words, start_or_resume
from colorgan.options import add_options
from colorgan.train.continual import TrainConfig, train


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` command."""
    p = subparsers.add_parser(
        "train", help="continual few-shot training: per-task adapters on a frozen base (CoLoR-GAN) or baselines",
        description=("For each task in turn: fresh adapters on the frozen base (the checkpoint's EMA generator), "
                     "D initialised from the base's, CoLoR-GAN recipe (anchor/patch adversarial scheme, R1, path "
                     "length). All tasks end in one bank: RUN/checkpoint. Baselines: --method lfs (LeFT adapters + "
                     "cluster-wise mode seeking), ewc and distill (full fine-tuning, one generator per task in "
                     "RUN/checkpoints/<task>). Multi-GPU: torchrun --nproc_per_node N -m colorgan train ..."))
    add_options(p, TrainConfig)
    p.add_argument("--use_act", "--use-act", dest="act", action="store_const", const="both",
                   default=argparse.SUPPRESS, help="upstream spelling: activation on (same as --act both)")
    add_run_options(p)
    p.add_argument("--inception", default=None, metavar="PATH",
                   help="Inception network file for the near check and the strength pick (default: found as "
                        "`colorgan eval` finds it; without one both are skipped)")
    p.set_defaults(func=run, cli_words=cli_words(TrainConfig))


def run(args: argparse.Namespace) -> int:
    summary = start_or_resume(args, train, TrainConfig)
    if summary is None:
        return 0
    state = "finished" if summary["finished"] else "stopped"
    where = summary.get("checkpoint") or ", ".join(v["checkpoint"] for v in summary.get("checkpoints", {}).values())
    print(f"{state}: method {summary['method']}, tasks {', '.join(summary['tasks'])}; checkpoint(s): {where}")
    st = summary.get("storage", {})
    if st.get("per_task_params"):
        per = ", ".join(f"{k}: {v:,}" for k, v in st["per_task_params"].items())
        print(f"parameters stored per task: {per} (base generator {st['base_generator_params']:,})")
    if "strength" in summary:
        print(strength_line(summary["strength"]))
    if "near" in summary:
        print(near_line(summary["near"]))
    return 0


def strength_line(strength: dict) -> str:
    """Each finished task's strength in one line (summary.json's `strength`; "picked": by --strength auto)."""
    kept = ", ".join(f"{t} {s:g}" + (" (picked)" if t in strength["shot_kid"] else "")
                     for t, s in strength["tasks"].items())
    return f"strength kept (--strength {strength['setting']}): {kept or 'no task finished'}"


def near_line(near: dict) -> str:
    """The near check's verdicts in one line (summary.json's `near`)."""
    if not near["checked"]:
        return "near check skipped: no Inception network (see train.log); the anchors were as given"
    verdicts = [f"{t} {'near' if t in near['near_tasks'] else 'not near'} "
                f"({'one image' if g is None else f'gap {g:.1f}'})" for t, g in near["gaps"].items()]
    return f"near check (anchors at least {near['anchor']:g} below gap {near['threshold']:g}): " + ", ".join(verdicts)
