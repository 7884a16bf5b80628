"""CPU training speed: `colorgan pretrain` iterations in fp32 against bf16 autocast, channels-last and
torch.compile, measured side by side in one process.

Every variant gets the same initial weights and the same batches. After a warm-up (torch.compile's
compile time is reported apart), the variants take turns one iteration at a time, so whatever else the
machine does slows them alike; the medians and their ratio to fp32 are the result. Correctness: each
variant's first forward (G on fixed z, D on a real batch) against fp32 eager, by relative error.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from bench.common import environment
from colorgan.data.folder import ImageFolder
from colorgan.discriminator import Discriminator
from colorgan.generator import Generator
from colorgan.train.distributed import DistInfo
from colorgan.train.loop import autocast_ctx
from colorgan.train.losses import lazy_adam_params
from colorgan.train.pretrain import PretrainConfig, parse_channels
from colorgan.train.steps import GANSteps
from fastlora.io import atomic_write_bytes, atomic_write_json

VARIANTS = ("fp32", "bf16", "channels-last", "compile")  # combine with '+', e.g. compile+channels-last
EMOJI32 = "4:256,8:256,16:128,32:64"  # the shipped base's architecture


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench cpu-train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="image folder for the real batches (default: random images)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--style-dim", type=int, default=256)
    p.add_argument("--n-mlp", type=int, default=4)
    p.add_argument("--channels", default=EMOJI32, help=f"channel table (default the emoji32 base's, {EMOJI32})")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--warmup", type=int, default=4, help="iterations per variant before timing (compiles here)")
    p.add_argument("--iters", type=int, default=16, help="timed iterations per variant (taken in turns)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default=None, help="write cpu-train.json and cpu-train.md here")
    return p


class Variant:
    """One way of running the pretraining iteration, with its own models and optimizers."""

    def __init__(self, name: str, cfg: PretrainConfig, seed: int = 0) -> None:
        self.name, self.cfg = name, cfg
        parts = set(name.split("+"))
        torch.manual_seed(seed)
        G = Generator(cfg.size, cfg.style_dim, cfg.n_mlp, channels=cfg.channels)
        D = Discriminator(cfg.size, channels=cfg.channels)
        self.channels_last = "channels-last" in parts
        if self.channels_last:
            G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
        g_lr, g_betas = lazy_adam_params(cfg.lr, cfg.g_reg_every)
        d_lr, d_betas = lazy_adam_params(cfg.lr, cfg.d_reg_every)
        self.steps = GANSteps(G, D, list(G.parameters()), list(D.parameters()),
                              torch.optim.Adam(G.parameters(), lr=g_lr, betas=g_betas),
                              torch.optim.Adam(D.parameters(), lr=d_lr, betas=d_betas), cfg,
                              torch.Generator().manual_seed(seed + 1), torch.device("cpu"), DistInfo(), None,
                              "bf16" if "bf16" in parts else "off", "torch", compile="compile" in parts)
        self.step, self.times, self.losses = 0, [], {}

    def _real(self, real: torch.Tensor) -> torch.Tensor:
        return real.contiguous(memory_format=torch.channels_last) if self.channels_last else real

    @torch.no_grad()
    def forward(self, z: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """G and D outputs as the D step computes them (same batch size and noise form, so a compiled graph is
        the one training uses)."""
        st = self.steps
        noise = st.G.make_noise(z.shape[0], generator=torch.Generator().manual_seed(3))
        with autocast_ctx(torch.device("cpu"), st.amp):
            img = st.synthesis_main(st.G.latents([z], backend="torch"), noise_mode="random", noise=noise,
                                    backend="torch")
            return img.float(), st.D_main(self._real(real)).float()

    def iteration(self, real: torch.Tensor) -> float:
        """One pretraining iteration (D step, lazy R1, G step, lazy path length); returns its seconds."""
        st, cfg, i = self.steps, self.cfg, self.step
        t = time.perf_counter()
        now = st.d_step(self._real(real), st.sample_latents(real.shape[0]))
        if i % cfg.d_reg_every == 0:
            now.update(st.r1_step(self._real(real)))
        now.update(st.g_step(st.sample_latents(real.shape[0])))
        if i % cfg.g_reg_every == 0:
            now.update(st.pl_step(real.shape[0]))
        self.step += 1
        self.losses = now
        return time.perf_counter() - t


def _batches(args: argparse.Namespace, n: int) -> list[torch.Tensor]:
    if args.data:
        ds = ImageFolder(args.data, args.size)
        imgs = torch.stack([ds[i % len(ds)] for i in range(n * args.batch)])
    else:
        imgs = torch.rand(n * args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return list(imgs.split(args.batch))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in names if not set(v.split("+")) <= set(VARIANTS)]
    if bad or "fp32" not in names:
        raise SystemExit(f"--variants must list fp32 and any of {', '.join(VARIANTS)}, got {args.variants!r}")
    cfg = PretrainConfig(data=args.data or "-", size=args.size, style_dim=args.style_dim, n_mlp=args.n_mlp,
                         channels=parse_channels(args.channels), batch=args.batch)
    variants = [Variant(n, cfg) for n in names]
    batches = _batches(args, 8)
    z = torch.randn(args.batch, args.style_dim, generator=torch.Generator().manual_seed(7))
    ref_img, ref_d = variants[0].forward(z, batches[0])
    records: dict[str, dict[str, Any]] = {}
    for v in variants:
        t = time.perf_counter()
        img, d = v.forward(z, batches[0])
        first = time.perf_counter() - t
        for i in range(args.warmup):
            v.iteration(batches[i % len(batches)])
        records[v.name] = {"rel_err_generator": rel_err(img, ref_img), "rel_err_discriminator": rel_err(d, ref_d),
                           "warmup_s": time.perf_counter() - t, "first_forward_s": first}
    for i in range(args.iters):  # in turns: the machine's other load falls on every variant alike
        for v in variants:
            v.times.append(v.iteration(batches[(args.warmup + i) % len(batches)]))
    base = statistics.median(variants[0].times)
    for v in variants:
        med = statistics.median(v.times)
        records[v.name].update(median_s_per_iter=med, speedup_vs_fp32=base / med, times=v.times,
                               last_losses=v.losses)
    return {"meta": {**environment(torch.device("cpu")), "threads": torch.get_num_threads(), "batch": args.batch, "size": args.size,
                     "channels": args.channels, "style_dim": args.style_dim, "n_mlp": args.n_mlp,
                     "warmup": args.warmup, "iters": args.iters, "data": args.data,
                     "command": "python -m bench cpu-train " + " ".join(args.argv)},
            "variants": records}


def markdown(result: dict[str, Any]) -> str:
    m = result["meta"]
    lines = [f"CPU pretraining iteration, {m['size']} px, batch {m['batch']}, {m['threads']} threads, "
             f"median of {m['iters']} iterations each (variants in turns); `{m['command']}`", "",
             "| variant | s / iteration | speed vs fp32 | rel. error G / D (vs fp32) | warm-up s |", "|---|---|---|---|---|"]
    for name, r in result["variants"].items():
        lines.append(f"| {name} | {r['median_s_per_iter']:.3f} | {r['speedup_vs_fp32']:.2f}x | "
                     f"{r['rel_err_generator']:.1e} / {r['rel_err_discriminator']:.1e} | {r['warmup_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(argv or [])
    args = build_parser().parse_args(argv)
    args.argv = argv
    result = run(args)
    text = markdown(result)
    print(text)
    if args.out:
        out = Path(args.out)
        atomic_write_json(out / "cpu-train.json", result)
        atomic_write_bytes(out / "cpu-train.md", text.encode())
        print(f"wrote {out / 'cpu-train.json'} and {out / 'cpu-train.md'}")
    return 0
