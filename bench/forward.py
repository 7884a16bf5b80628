"""Forward microbenchmark of the fused modulated conv + adapter against the torch baselines.

    python -m bench.forward [--quick] [--batch 4,16] [--rank 1,8] [--dtype fp32,bf16] [--act both] [--out FILE]

Methods: "fused" (Triton kernels, CUDA only), "grouped" (the published path: ΔW built in torch,
one modulated weight per sample, grouped conv), "shared" (shared-weight torch path: x·s, one conv,
·d), "merged_conv" (the floor: a single cuDNN conv / transposed conv with pre-merged weights, no
modulation, no blur, no epilogue). Layers: the StyleGAN2-256 ladder (512 ch at 4..64 px, 256 ch at
128 px, 128 ch at 256 px; plain and up; 1x1 ToRGB). On CUDA: triton.testing.do_bench medians (it
flushes L2 between repetitions), TF32 off for fp32; on CPU (--quick only makes sense there): tiny
shapes, torch methods, wall-clock medians. Writes JSON records to
bench/results/<device>-<date>-forward.json (or --out) and prints a markdown table.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import re
import statistics
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F

from fastlora import LLoRA
from fastlora import functional as FL

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Layer:
    name: str
    c_in: int
    c_out: int
    res: int  # output resolution
    k: int = 3
    up: bool = False
    torgb: bool = False

    @property
    def in_res(self) -> int:
        return self.res // 2 if self.up else self.res


def ladder(quick: bool, cuda: bool) -> List[Layer]:
    """The StyleGAN2-256 layers (or a tiny stand-in ladder for CPU quick runs)."""
    if quick and not cuda:
        return [Layer("conv16@4", 16, 16, 4), Layer("up16@8", 16, 16, 8, up=True), Layer("torgb16@8", 16, 3, 8, 1,
                                                                                           torgb=True)]
    layers = [Layer("conv512@4", 512, 512, 4)]
    for res in (8, 16, 32, 64):
        layers += [Layer(f"up512@{res}", 512, 512, res, up=True), Layer(f"conv512@{res}", 512, 512, res)]
    layers += [Layer("up256@128", 512, 256, 128, up=True), Layer("conv256@128", 256, 256, 128),
               Layer("up128@256", 256, 128, 256, up=True), Layer("conv128@256", 128, 128, 256),
               Layer("torgb512@32", 512, 3, 32, 1, torgb=True), Layer("torgb128@256", 128, 3, 256, 1, torgb=True)]
    if quick:
        keep = {"conv512@4", "up512@16", "conv512@32", "conv128@256", "torgb512@32"}
        layers = [la for la in layers if la.name in keep]
    return layers


def device_slug(dev: torch.device) -> str:
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _time_cuda(fn: Callable[[], object]) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=10, rep=50, return_mode="median"))


def _time_cpu(fn: Callable[[], object], reps: int = 5) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def _peak_mb(fn: Callable[[], object], dev: torch.device) -> Optional[float]:
    if dev.type != "cuda":
        return None
    torch.cuda.synchronize(dev)
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    fn()
    torch.cuda.synchronize(dev)
    return (torch.cuda.max_memory_allocated(dev) - base) / 2 ** 20


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref).norm() / ref.norm())


def bench_case(layer: Layer, batch: int, rank: int, act: str, dtype: str, dev: torch.device,
               methods: List[str]) -> List[dict]:
    """All methods on one (layer, batch, rank, act, dtype) case."""
    g = torch.Generator().manual_seed(0)
    dt = DTYPES[dtype]
    k, h = layer.k, layer.in_res
    x = torch.randn(batch, layer.c_in, h, h, generator=g)
    w = torch.randn(layer.c_out, layer.c_in, k, k, generator=g)
    s = torch.randn(batch, layer.c_in, generator=g) + 1.0
    a = LLoRA(torch.randn(layer.c_in, rank, generator=g) * 0.1, torch.randn(layer.c_out, rank, generator=g) * 0.1,
              torch.randn(rank, rank, k * k, generator=g) * 0.1, alpha=1.0, act=act)
    bias = torch.randn(layer.c_out, generator=g)
    oh = layer.res
    skip = torch.randn(batch, layer.c_out, oh, oh, generator=g) if layer.torgb else None
    noise = None if layer.torgb else torch.randn(batch, 1, oh, oh, generator=g) * 0.1
    scale = 1 / math.sqrt(layer.c_in * k * k)
    kw = dict(scale=scale, demodulate=not layer.torgb, up=layer.up, bias=bias, noise=noise, skip=skip,
              activation=None if layer.torgb else "lrelu")

    def on(t, d=dt):
        return None if t is None else t.to(dev, d)

    def adapter_on(d):
        return LLoRA(on(a.A, d), on(a.B, d), on(a.B_inst, d), alpha=a.alpha, act=a.act)

    # float64 reference on the benchmark device
    ref = FL.modulated_conv2d(on(x, torch.float64), on(w, torch.float64), on(s, torch.float64),
                              adapter=adapter_on(torch.float64), backend="torch",
                              **{kk: on(v, torch.float64) if isinstance(v, torch.Tensor) else v for kk, v in kw.items()})
    xd, wd, sd, ad = on(x), on(w), on(s), adapter_on(dt)
    kwd = {kk: on(v) if isinstance(v, torch.Tensor) else v for kk, v in kw.items()}
    merged = (FL.adapted_weight(wd, ad) * scale).contiguous()
    fns = {
        "fused": lambda: FL.modulated_conv2d(xd, wd, sd, adapter=ad, backend="triton", **kwd),
        "grouped": lambda: FL.modulated_conv2d(xd, wd, sd, adapter=ad, backend="torch", form="grouped", **kwd),
        "shared": lambda: FL.modulated_conv2d(xd, wd, sd, adapter=ad, backend="torch", form="shared", **kwd),
        "merged_conv": (lambda: F.conv_transpose2d(xd, merged.transpose(0, 1), stride=2)) if layer.up else
                       (lambda: F.conv2d(xd, merged, padding=k // 2)),
    }
    timer = _time_cuda if dev.type == "cuda" else _time_cpu
    recs = []
    for m in methods:
        fn = fns[m]
        with torch.no_grad():
            out = fn()
            err = _rel(out, ref) if m != "merged_conv" else None
            ms = timer(fn)
            peak = _peak_mb(fn, dev)
        recs.append(dict(layer=layer.name, batch=batch, rank=rank, act=act, dtype=dtype, mode="forward", method=m,
                         median_ms=ms, peak_mb=peak, rel_err=err))
    return recs


def markdown(records: List[dict]) -> str:
    methods = sorted({r["method"] for r in records}, key=["fused", "grouped", "shared", "merged_conv"].index)
    keyf = lambda r: (r["layer"], r["batch"], r["rank"], r["act"], r["dtype"])  # noqa: E731
    rows: dict = {}
    for r in records:
        rows.setdefault(keyf(r), {})[r["method"]] = r
    head = "| layer | batch | rank | act | dtype | " + " | ".join(f"{m} ms" for m in methods) + " | max rel err |"
    lines = [head, "|" + "---|" * (6 + len(methods))]
    for key, by in rows.items():
        errs = [by[m]["rel_err"] for m in methods if m in by and by[m]["rel_err"] is not None]
        cells = [f"{by[m]['median_ms']:.4f}" if m in by else "-" for m in methods]
        err = f"{max(errs):.2e}" if errs else "-"
        lines.append("| " + " | ".join(str(v) for v in key) + " | " + " | ".join(cells) + f" | {err} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> List[dict]:
    p = argparse.ArgumentParser(prog="python -m bench.forward", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a few layers (tiny ones on CPU)")
    p.add_argument("--batch", default="4,16")
    p.add_argument("--rank", default="1,8")
    p.add_argument("--act", default="both", help="LLoRA act settings, comma-separated (both, inner, none)")
    p.add_argument("--dtype", default=None, help="comma-separated fp32,bf16,fp16 (default fp32,bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--methods", default=None, help="comma-separated subset of fused,grouped,shared,merged_conv")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/<device>-<date>-forward.json)")
    args = p.parse_args(argv)

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    dtypes = (args.dtype or ("fp32,bf16" if cuda else "fp32")).split(",")
    methods = (args.methods or ("fused,grouped,shared,merged_conv" if cuda else "grouped,shared,merged_conv")).split(",")
    if not cuda and "fused" in methods:
        raise SystemExit("the fused method needs a CUDA GPU (the Triton interpreter is not a benchmark)")
    batches = [int(v) for v in args.batch.split(",")]
    ranks = [int(v) for v in args.rank.split(",")]
    if args.quick and not cuda:
        batches, ranks = batches[:1], ranks[:2]
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    meta = dict(device=torch.cuda.get_device_name(dev) if cuda else f"cpu ({platform.processor() or platform.machine()})",
                torch=torch.__version__, triton=triton_version)
    records: List[dict] = []
    for layer in ladder(args.quick, cuda):
        for batch in batches:
            for rank in ranks:
                for act in args.act.split(","):
                    for dtype in dtypes:
                        for rec in bench_case(layer, batch, rank, act, dtype, dev, methods):
                            records.append({**meta, **rec})
    out = args.out or os.path.join(RESULTS, f"{device_slug(dev)}-{_dt.date.today().isoformat()}-forward.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(records, f, indent=1)
    print(markdown(records))
    print(f"\n{len(records)} records written to {out}")
    return records


if __name__ == "__main__":
    main()
