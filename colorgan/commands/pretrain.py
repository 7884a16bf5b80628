"""`colorgan pretrain`: train a base StyleGAN2 from scratch on an image folder."""
from __future__ import annotations

import argparse

from colorgan.commands._run import add_run_options, cli_words, start_or_resume
from colorgan.options import add_options
from colorgan.train.pretrain import PretrainConfig, pretrain


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `pretrain` command."""
    p = subparsers.add_parser(
        "pretrain", help="train a base StyleGAN2 from scratch on an image folder",
        description=("rosinality StyleGAN2 recipe: non-saturating loss, R1 every --d-reg-every, path length every "
                     "--g-reg-every, style mixing, EMA generator, differentiable augmentation for small sets. "
                     "Writes RUN/config.json, log.jsonl, train.log, samples/, checkpoint/ (colorgan format) and "
                     "state/ (for --resume). Multi-GPU: torchrun --nproc_per_node N -m colorgan pretrain ..."))
    add_options(p, PretrainConfig)
    add_run_options(p)
    p.set_defaults(func=run, cli_words=cli_words(PretrainConfig))


def run(args: argparse.Namespace) -> int:
    summary = start_or_resume(args, pretrain, PretrainConfig)
    if summary is not None:
        state = "finished" if summary["finished"] else "stopped"
        print(f"{state} at step {summary['step']}; checkpoint: {summary['checkpoint']}")
    return 0
