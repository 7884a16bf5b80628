"""End-to-end benchmark: one CoLoR-GAN training iteration and generation images/s.

    python -m bench e2e [--quick] [--size 256] [--batch 4,16] [--rank 1,8] [--act inner] [--amp auto|off|bf16]
                        [--methods ours,published,shared] [--iters 10] [--out DIR] [--overwrite]

Methods (the same generator and discriminator, adapters on the frozen base, one task):
  ours       fastlora backend="triton" (fused kernels; CUDA only);
  published  the published-style reference: torch backend with the per-sample-weight grouped conv
             (form="grouped" in every modulated conv);
  shared     torch backend, shared-weight form (the project's reference path);
  ours-graph generation only: ours' G(z) captured in a CUDA graph and replayed (bench.graphs).
A training iteration (colorgan.train.steps.GANSteps, as `colorgan train` runs it): D step +
G step + EMA update of the adapters, with the patch head CoLoR-GAN uses on 3 of 4 iterations;
"+reg" adds the lazy R1 step and the path-length step (both with second-order gradients).
Generation: G(z) under inference mode, constant noise. Median and p20/p80 over --iters after
warm-up; peak memory over the timed iterations (CUDA).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import shlex
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch

from bench import common

E2E_METHODS = ("ours", "published", "shared", "ours-graph")
DEFAULT_E2E_METHODS = ("ours", "published", "shared")


@contextlib.contextmanager
def modconv_form(model: torch.nn.Module, form: str) -> Iterator[None]:
    """Make every fastlora.ModulatedConv2d of `model` run with `form` (its `form` attribute), restored on exit."""
    from fastlora import ModulatedConv2d

    mods = [m for m in model.modules() if isinstance(m, ModulatedConv2d)]
    saved = [m.form for m in mods]
    for m in mods:
        m.form = form
    try:
        yield
    finally:
        for m, f in zip(mods, saved):
            m.form = f


def build_models(size: int, quick: bool, rank: int, act: str, dev: torch.device, seed: int):
    """Generator with one task's adapters on a frozen base, and a CoLoR-GAN discriminator (patch heads).
    Adapter tensors that start at zero are perturbed, so no timed tensor is all zeros."""
    import fastlora
    from colorgan import Generator
    from colorgan.discriminator import Discriminator

    torch.manual_seed(seed)
    if quick:
        ch = {4: 32, 8: 32, 16: 16, 32: 16}
        G = Generator(size, style_dim=32, n_mlp=2, channels={r: c for r, c in ch.items() if r <= size})
        D = Discriminator(size, channels={r: c for r, c in ch.items() if r <= size}, patch_heads=True)
    else:
        G = Generator(size)
        D = Discriminator(size, patch_heads=True)
    fastlora.add_task(G, "task", fastlora.AdapterConfig(kind="llora", rank=rank, act=act))
    fastlora.freeze_base(G)
    fastlora.set_task(G, "task")
    params = fastlora.task_parameters(G, "task")
    with torch.no_grad():
        for p in params:
            if not p.any():
                p.add_(torch.randn_like(p) * 0.01)
    return G.to(dev), D.to(dev)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def bench_train(G, D, method: str, batch: int, reg: bool, amp: str, dev: torch.device, iters: int,
                warmup: int, seed: int) -> dict:
    """Median time of one training iteration (and of each step in it)."""
    import fastlora
    from colorgan.train.distributed import DistInfo
    from colorgan.train.ema import ema_update
    from colorgan.train.losses import lazy_adam_params
    from colorgan.train.steps import GANSteps, RegConfig

    G, D = copy.deepcopy(G), copy.deepcopy(D)
    g_params = fastlora.task_parameters(G, "task")
    ema = [p.detach().clone() for p in g_params]
    reg_cfg = RegConfig()
    g_lr, g_betas = lazy_adam_params(0.002, reg_cfg.g_reg_every)
    d_lr, d_betas = lazy_adam_params(0.002, reg_cfg.d_reg_every)
    g_opt = torch.optim.Adam(g_params, lr=g_lr, betas=g_betas)
    d_opt = torch.optim.Adam(D.parameters(), lr=d_lr, betas=d_betas)
    gen = torch.Generator().manual_seed(seed)
    backend = "triton" if method == "ours" else "torch"
    steps = GANSteps(G, D, g_params, list(D.parameters()), g_opt, d_opt, reg_cfg, gen, dev, DistInfo(device=dev),
                     None, amp, backend)
    patch = 0 if D.num_patch_heads else None
    form = "grouped" if method == "published" else "shared"
    per_step: Dict[str, List[float]] = {}
    totals: List[float] = []

    def timed(name: str, f):
        _sync(dev)
        t0 = time.perf_counter()
        f()
        _sync(dev)
        dt = (time.perf_counter() - t0) * 1e3
        per_step.setdefault(name, []).append(dt)
        return dt

    with modconv_form(G, form):
        for it in range(warmup + iters):
            real = torch.rand(batch, 3, G.size, G.size, generator=gen).to(dev) * 2 - 1
            if it == warmup:
                per_step.clear()
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
            total = timed("d", lambda: steps.d_step(real, steps.sample_latents(batch), patch))
            if reg:
                total += timed("r1", lambda: steps.r1_step(real, patch))
            total += timed("g", lambda: steps.g_step(steps.sample_latents(batch), patch))
            if reg:
                total += timed("pl", lambda: steps.pl_step(batch))
            total += timed("ema", lambda: ema_update(ema, g_params, 0.999))
            if it >= warmup:
                totals.append(total)
    t = common._summary(totals, warmup)
    out = {**t.to_dict(), "images_per_s": batch / (t.median_ms * 1e-3),
           "steps_ms": {k: common.percentile(v, 0.5) for k, v in per_step.items()},
           "peak_mb": torch.cuda.max_memory_allocated(dev) / 2 ** 20 if dev.type == "cuda" else None,
           "patch": patch}
    return out


def graphed_generator(G, z: torch.Tensor, amp: str) -> tuple:
    """(replay, how): G(z) with the fused backend (const noise) captured in a CUDA graph, through the
    project's own generator-graph API where bench.features finds one, else captured here with
    torch.cuda.graph (autocast's weight-cast cache off, as capture needs)."""
    from bench import features, graphs

    api = features.detect(z.device)["generator_graph"]
    if api.available and api.call is not None:
        return api.call(G, z, amp), api.how
    amp_ctx = (torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if amp == "bf16"
               else contextlib.nullcontext())

    def fwd():
        with torch.inference_mode(), amp_ctx:
            return G(z, backend="triton", noise_mode="const")
    return graphs.capture(fwd), f"torch.cuda.graph around G(z) in bench ({api.how})"


def bench_generate(G, method: str, batch: int, amp: str, dev: torch.device, iters: int, warmup: int,
                   ref: torch.Tensor, z: torch.Tensor) -> dict:
    from colorgan.train.loop import autocast_ctx

    backend = "triton" if method in ("ours", "ours-graph") else "torch"
    form = "grouped" if method == "published" else "shared"
    extra: Dict[str, Any] = {}

    if method == "ours-graph":
        replay, extra["graph"] = graphed_generator(G, z, amp)

        def call(_i):
            return replay()
    else:
        def call(_i):
            with torch.inference_mode(), autocast_ctx(dev, amp):
                return G(z, backend=backend, noise_mode="const")

    with modconv_form(G, form):
        err = common.rel_err(call(0).float(), ref)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
            t = common.time_cuda(call, device=dev, flush=False, min_reps=iters, max_reps=max(iters, 50))
            peak = torch.cuda.max_memory_allocated(dev) / 2 ** 20
        else:
            t = common.time_cpu(call, warmup=warmup, reps=iters)
            peak = None
    return {**t.to_dict(), "images_per_s": batch / (t.median_ms * 1e-3), "peak_mb": peak, "rel_err": err, **extra}


def unavailable_reason(method: str, G, dev: torch.device) -> Optional[str]:
    """Why `method` cannot run with G on `dev`, or None."""
    from bench import graphs
    from fastlora.backend import triton_unavailable_reason

    if method in ("ours", "ours-graph"):
        if dev.type != "cuda":
            return "the fused Triton kernels are timed on CUDA only"
        why = triton_unavailable_reason(G.input.input)
        if why:
            return why
    if method == "ours-graph":
        return graphs.unavailable_reason(dev)
    return None


def reference_images(G, z: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """G(z) in float64 with the reference backend, const noise (the generation records' rel_err)."""
    with torch.inference_mode():
        G64 = copy.deepcopy(G).double()
        ref = G64(z.to(dev, torch.float64), backend="torch", noise_mode="const")
        del G64
    return ref


def measure_job(G, D, kind: str, reg: Optional[bool], method: str, batch: int, amp: str, dev: torch.device,
                iters: int, warmup: int, seed: int, ref: Optional[torch.Tensor], z: torch.Tensor,
                base: dict, skip: Optional[str] = None) -> Dict[str, Any]:
    """One record: a training iteration (kind "train", `reg` adds R1 and path length) or generation
    ("generate") with one method; unavailable methods (or `skip`, a reason to leave it out) are recorded with
    the reason, errors with the message."""
    rec: Dict[str, Any] = dict(base, kind=kind, reg=reg, batch=batch, method=method, median_ms=None, p20_ms=None,
                               p80_ms=None, reps=None, images_per_s=None, peak_mb=None, rel_err=None, skipped=None,
                               error=None)
    why = skip or unavailable_reason(method, G, dev)
    if why is None and kind == "train" and method == "ours-graph":
        why = "the CUDA graph covers the generator forward (generation) only"
    if why:
        rec["skipped"] = why
        return rec
    try:
        if kind == "train":
            rec.update(bench_train(G, D, method, batch, bool(reg), amp, dev, iters, warmup, seed))
        else:
            rec.update(bench_generate(G, method, batch, amp, dev, iters, warmup, ref, z))
    except torch.cuda.OutOfMemoryError:
        rec["skipped"] = "out of memory"
    except Exception as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"[:500]
    finally:
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return rec


def job_line(rec: dict) -> str:
    """One log line for a record."""
    status = (f"{rec['median_ms']:.3f} ms" if rec["median_ms"] is not None
              else rec["skipped"] or f"ERROR {rec['error']}")
    return (f"{rec['kind']}{'+reg' if rec.get('reg') else ''} b{rec['batch']} r{rec['rank']} {rec['act']} "
            f"{rec['method']:10s} {status}")


def markdown(records: List[dict], meta: dict) -> str:
    lines = [f"# End-to-end benchmark: {meta['device']}, {meta['date']}", "",
             f"`{meta['command']}`; torch {meta['torch']}, triton {meta['triton']}, CUDA {meta['cuda']}, driver "
             f"{meta['driver']}; generator {meta['size']} px{' (tiny quick model)' if meta['quick'] else ''}, "
             f"amp {meta['amp']}. Training: one iteration (D + G + EMA; +reg adds R1 and path length). "
             "Generation: G(z), inference mode.", "",
             "| kind | batch | rank | act | method | median ms (p20–p80) | images/s | ×published | ×shared | "
             "peak MB | rel err |", "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|"]

    def f(v, fmt):
        return "—" if v is None else format(v, fmt)

    for r in records:
        kind = r["kind"] + ("+reg" if r.get("reg") else "")
        if r["median_ms"] is None:
            why = r["skipped"] or f"error: {r['error']}"
            lines.append(f"| {kind} | {r['batch']} | {r['rank']} | {r['act']} | {r['method']} | n/a ({why}) "
                         f"| — | — | — | — | — |")
            continue
        lines.append(f"| {kind} | {r['batch']} | {r['rank']} | {r['act']} | {r['method']} | "
                     f"{r['median_ms']:.4g} ({r['p20_ms']:.4g}–{r['p80_ms']:.4g}) | {r['images_per_s']:.1f} | "
                     f"{f(r.get('speedup_vs_published'), '.2f')} | {f(r.get('speedup_vs_shared'), '.2f')} | "
                     f"{f(r['peak_mb'], '.0f')} | {f(r.get('rel_err'), '.1e')} |")
    return "\n".join(lines) + "\n"


def add_speedups(records: List[dict]) -> None:
    groups: Dict[tuple, Dict[str, dict]] = {}
    for r in records:
        groups.setdefault((r["kind"], r.get("reg"), r["batch"], r["rank"], r["act"]), {})[r["method"]] = r
    for by in groups.values():
        for r in by.values():
            for ref in ("published", "shared"):
                t, t_ref = r["median_ms"], by.get(ref, {}).get("median_ms")
                r[f"speedup_vs_{ref}"] = t_ref / t if t and t_ref else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench e2e", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a tiny 32 px model (CPU tests); default on the CPU")
    p.add_argument("--size", type=int, default=None, help="image size (default 256; 32 with --quick)")
    p.add_argument("--batch", default=None, help="default 4,16 (2 with --quick on the CPU)")
    p.add_argument("--rank", default="1,8", help="adapter ranks (default 1,8)")
    p.add_argument("--act", default="inner", help="LLoRA act settings (default inner)")
    p.add_argument("--amp", default="auto", choices=("auto", "off", "bf16"),
                   help="as `colorgan train --amp` (auto: bf16 on CUDA, off on the CPU)")
    p.add_argument("--methods", default=",".join(DEFAULT_E2E_METHODS),
                   help=f"of {','.join(E2E_METHODS)} (ours-graph: generation only)")
    p.add_argument("--no-reg", action="store_true", help="only the iteration without regularisation steps")
    p.add_argument("--no-generate", action="store_true", help="skip the generation benchmark")
    p.add_argument("--iters", type=int, default=None, help="timed iterations (default 10 on CUDA, 2 on the CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed iterations first (default 3 on CUDA, 1 on CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 on the CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None, help="results folder (default bench/results)")
    p.add_argument("--overwrite", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> dict:
    from colorgan.train.loop import resolve_amp

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = dev.type == "cuda"
    quick = args.quick or not cuda
    size = args.size or (32 if quick else 256)
    batches = common.parse_list(args.batch, int) or ([2] if quick and not cuda else [4, 16])
    ranks = common.parse_list(args.rank, int)
    acts = common.parse_list(args.act)
    methods = common.parse_list(args.methods)
    bad = [m for m in methods if m not in E2E_METHODS]
    if bad:
        raise SystemExit(f"unknown method(s) {bad}; choose from {E2E_METHODS}")
    amp = resolve_amp(args.amp, dev)
    iters = args.iters or (10 if cuda else 2)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    if not cuda or args.threads:
        torch.set_num_threads(args.threads or 1)
    stem = common.result_stem(args.out, dev, "e2e")
    common.check_writable(stem, (".json", ".md"), args.overwrite)
    meta = common.environment(dev, "python -m bench e2e " + shlex.join(argv))
    meta.update(size=size, quick=quick, amp=amp, batches=batches, ranks=ranks, acts=acts, methods=methods,
                iters=iters, warmup=warmup, seed=args.seed,
                timing="training: host wall clock per iteration with device synchronisation around each step; "
                       "generation: CUDA events (CPU: wall clock); median and p20/p80")
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    records: List[dict] = []
    t0 = time.perf_counter()
    for rank in ranks:
        for act in acts:
            G, D = build_models(size, quick, rank, act, dev, args.seed)
            base = dict(device=meta["device"], torch=meta["torch"], triton=meta["triton"], size=size, rank=rank,
                        act=act, amp=amp, dtype="bf16-amp" if amp == "bf16" else "fp32")
            for batch in batches:
                z = torch.randn(batch, G.style_dim, generator=torch.Generator().manual_seed(args.seed + batch))
                ref = None if args.no_generate else reference_images(G, z, dev)
                jobs = [("train", False)] + ([] if args.no_reg else [("train", True)]) + \
                       ([] if args.no_generate else [("generate", None)])
                for kind, reg in jobs:
                    for method in methods:
                        rec = measure_job(G, D, kind, reg, method, batch, amp, dev, iters, warmup, args.seed,
                                          ref, z.to(dev), base)
                        records.append(rec)
                        log(f"  {job_line(rec)}")
            del G, D
    add_speedups(records)
    meta["wall_s"] = round(time.perf_counter() - t0, 1)
    report = {"meta": meta, "records": records}
    md = markdown(records, meta)
    files = common.write_outputs(stem, report, md)
    print(md)
    print("wrote " + ", ".join(str(f) for f in files))
    report["files"] = [str(f) for f in files]
    return report
