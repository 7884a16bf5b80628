"""`colorgan train`: continual few-shot adaptation, one task after another, on a frozen base."""
from __future__ import annotations

import argparse

from colorgan.commands.pretrain import add_run_options, start_or_resume
from colorgan.train.augment import DEFAULT_POLICY


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` command."""
    p = subparsers.add_parser(
        "train", help="continual few-shot training: per-task adapters on a frozen base (CoLoR-GAN) or baselines",
        description=("For each task in turn: fresh adapters on the frozen base (the checkpoint's EMA generator), "
                     "D initialised from the base's, CoLoR-GAN recipe (anchor/patch adversarial scheme, R1, path "
                     "length). All tasks end in one bank: RUN/checkpoint. Baselines: --method lfs (LeFT adapters + "
                     "cluster-wise mode seeking), ewc and distill (full fine-tuning, one generator per task in "
                     "RUN/checkpoints/<task>). Multi-GPU: torchrun --nproc_per_node N -m colorgan train ..."))
    p.add_argument("--ckpt", help="base checkpoint folder (colorgan format, with a discriminator)")
    p.add_argument("--tasks", help="name=DIR,name=DIR,... (trained in this order)")
    p.add_argument("--out", help="run folder to create")
    p.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN (all other settings come from it)")
    p.add_argument("--method", default="color", choices=("color", "lfs", "ewc", "distill"),
                   help="color: CoLoR-GAN adapters (default); lfs: LeFT + mode seeking; ewc / distill: full "
                        "fine-tuning with the Fisher penalty / Lifelong-GAN distillation")
    p.add_argument("--kind", default=None, choices=("llora", "lora", "left"),
                   help="adapter kind (default: llora for color, left for lfs)")
    p.add_argument("--rank", type=int, default=1)
    p.add_argument("--alpha-conv", "--lora_alpha_conv", dest="alpha_conv", type=float, default=0.1)
    p.add_argument("--alpha-linear", "--lora_alpha_fc", dest="alpha_linear", type=float, default=4.0)
    p.add_argument("--act", default="inner", choices=("both", "inner", "none"),
                   help="adapter activation (LLoRA: both/inner/none; LeFT: inner/none; default inner)")
    p.add_argument("--use_act", "--use-act", dest="act", action="store_const", const="both",
                   help="upstream spelling: activation on (same as --act both)")
    p.add_argument("--compat", default="default", choices=("default", "upstream"),
                   help="upstream: the published adapter initialisation and alpha routing")
    p.add_argument("--iter", type=int, default=3002, help="iterations per task (default 3002)")
    p.add_argument("--batch", type=int, default=4, help="batch per process (default 4)")
    p.add_argument("--lr", type=float, default=0.002)
    p.add_argument("--r1", type=float, default=10.0)
    p.add_argument("--path-regularize", type=float, default=2.0)
    p.add_argument("--path-batch-shrink", type=int, default=2)
    p.add_argument("--d-reg-every", type=int, default=16)
    p.add_argument("--g-reg-every", type=int, default=4)
    p.add_argument("--mixing", type=float, default=0.9)
    p.add_argument("--subspace-freq", type=int, default=4, help="every N-th iteration uses anchor latents")
    p.add_argument("--subspace-std", type=float, default=0.1)
    p.add_argument("--n-anchors", "--n_train", dest="n_anchors", type=int, default=10)
    p.add_argument("--highp", type=int, default=1, help="patch heads drawn from (default 1: the first)")
    p.add_argument("--augment", action="store_true", help="differentiable augmentation of D's inputs")
    p.add_argument("--augment-policy", default=DEFAULT_POLICY)
    p.add_argument("--ema-decay", type=float, default=0.995, help="EMA decay of the trained tensors")
    p.add_argument("--ms-weight", type=float, default=1.0, help="lfs: mode-seeking loss weight")
    p.add_argument("--ms-batch-mult", type=int, default=4, help="lfs: fakes per G step = this × batch")
    p.add_argument("--lpips", default=None, help="lfs: LPIPS weights file for the cluster assignment "
                                                 "(default: pixel distance)")
    p.add_argument("--ewc-lambda", type=float, default=5e8)
    p.add_argument("--fisher-batches", type=int, default=16)
    p.add_argument("--distill-weight", type=float, default=1.0)
    p.add_argument("--n-sample", type=int, default=16)
    p.add_argument("--sample-every", type=int, default=500)
    p.add_argument("--save-every", type=int, default=1000)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "triton"))
    add_run_options(p)
    p.set_defaults(func=run)


FIELDS = ("method", "kind", "rank", "alpha_conv", "alpha_linear", "act", "compat", "iter", "batch", "lr", "r1",
          "path_regularize", "path_batch_shrink", "d_reg_every", "g_reg_every", "mixing", "subspace_freq",
          "subspace_std", "n_anchors", "highp", "augment", "augment_policy", "ema_decay", "ms_weight",
          "ms_batch_mult", "lpips", "ewc_lambda", "fisher_batches", "distill_weight", "n_sample", "sample_every",
          "save_every", "log_every", "seed", "backend")


def run(args: argparse.Namespace) -> int:
    from colorgan.train.continual import TrainConfig, train

    summary = start_or_resume(args, train, ("ckpt", "tasks", "out"), lambda: TrainConfig(
        ckpt=args.ckpt, tasks=args.tasks, **{f: getattr(args, f) for f in FIELDS}))
    if summary is None:
        return 0
    state = "finished" if summary["finished"] else "stopped"
    where = summary.get("checkpoint") or ", ".join(v["checkpoint"] for v in summary.get("checkpoints", {}).values())
    print(f"{state}: method {summary['method']}, tasks {', '.join(summary['tasks'])}; checkpoint(s): {where}")
    st = summary.get("storage", {})
    if st.get("per_task_params"):
        per = ", ".join(f"{k}: {v:,}" for k, v in st["per_task_params"].items())
        print(f"parameters stored per task: {per} (base generator {st['base_generator_params']:,})")
    return 0
