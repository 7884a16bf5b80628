"""Layer benchmark: every method of `bench.methods` over the benchmark matrix (docs/design.md §7).

    python -m bench layers [--quick] [--ladder 256|1024] [--layers conv512@32,...] [--batch 4,8,16,32]
                           [--rank 1,4,8,16] [--act both,inner,none,lora] [--dtype fp32,tf32,bf16]
                           [--mode forward,backward,fwd+bwd] [--methods ...] [--out DIR] [--overwrite]

Per case (layer, batch, rank, act, dtype, mode, method): median and p20/p80 ms, achieved TFLOP/s
(base-conv FLOPs) and GB/s (x + y + W bytes) against the ceilings, the roofline floor, peak
memory, relative error against a float64 reference (the output, and for backward the gradients
of x, style and the adapter tensors), and speedups against peft, published and merged.
Writes <device>-<date>-layers.{json,md,png} under bench/results/ (or --out).
"""
from __future__ import annotations

import argparse
import gc
import math
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from bench import common
from bench.cases import LADDERS, Case, ladder
from bench.methods import (ACT_SETTINGS, COMPILED, DEFAULT_METHODS, DTYPES, METHODS, Inputs, NotApplicable,
                           make_inputs)

MODES = ("forward", "backward", "fwd+bwd")
SET_BUDGET_BYTES = 2 * 2 ** 30  # at most this much memory in rotated input sets
L2_BYTES = 50 * 2 ** 20         # H100


def _tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def n_input_sets(set_bytes: int, dev: torch.device, cap: int = 8) -> int:
    """Enough input sets to exceed twice the L2 cache (within SET_BUDGET_BYTES), at least 2 on CUDA."""
    if dev.type != "cuda":
        return 1
    want = math.ceil(2 * L2_BYTES / max(set_bytes, 1))
    return int(max(2, min(cap, want, max(1, SET_BUDGET_BYTES // max(set_bytes, 1)))))


def reference(p: Inputs, case: Case, gy: torch.Tensor) -> tuple[torch.Tensor, List[torch.Tensor]]:
    """float64 output and gradients (x, style, adapter tensors) of the torch reference."""
    from bench.methods import _modconv

    q = p.to(p.x.device, torch.float64).requires_grad_("all")
    with torch.enable_grad():
        y = _modconv(q, case, "shared", "torch")
        grads = torch.autograd.grad(y, q.grad_tensors("all"), gy.to(torch.float64))
    return y.detach(), [g.detach() for g in grads]


def _err(vals: List[Optional[float]]) -> Optional[float]:
    vals = [v for v in vals if v is not None]
    return max(vals) if vals else None


def run_case(case: Case, batch: int, rank: int, act: str, dtype: str, modes: Sequence[str],
             methods: Sequence[str], dev: torch.device, *, compile_reason: Optional[str], seed: int,
             cpu_reps: int, log: Callable[[str], None], timing_kw: Optional[dict] = None,
             compile_mode: Optional[str] = None, build_kw: Optional[Dict[str, dict]] = None,
             inputs_on_device: bool = False, channels_last: bool = False, cpu_warmup: int = 1) -> List[dict]:
    """All methods and modes of one (layer, batch, rank, act, dtype).

    `build_kw`: extra keyword arguments per method name for its factory; `inputs_on_device`: draw the
    random inputs on `dev` (fast for large layers on a GPU) instead of on the CPU; `channels_last`: lay
    out activations (x, skip and the output gradient) in torch.channels_last for every method."""
    dt = DTYPES[dtype]
    if dev.type == "cuda":
        _tf32(dtype == "tf32")
    gen = torch.Generator(device=dev if inputs_on_device else "cpu").manual_seed(seed)
    fmt = torch.channels_last if channels_last else None
    cpu_sets = [make_inputs(case, batch, rank, act, gen, fmt)]
    elsize = torch.tensor([], dtype=dt).element_size()
    n_sets = n_input_sets(cpu_sets[0].nbytes() * elsize // 4, dev)
    cpu_sets += [make_inputs(case, batch, rank, act, gen, fmt) for _ in range(n_sets - 1)]
    oh = case.res
    gy_cpu = torch.randn(batch, case.c_out, oh, oh, generator=gen, device=gen.device)
    if fmt is not None:
        gy_cpu = gy_cpu.contiguous(memory_format=fmt)
    y_ref, g_ref = reference(cpu_sets[0].to(dev, torch.float64), case, gy_cpu.to(dev))
    gy = gy_cpu.to(dev, dt)
    flops, nbytes = case.flops(batch), case.bytes(batch, torch.tensor([], dtype=dt).element_size())
    common_rec = dict(layer=case.name, c_in=case.c_in, c_out=case.c_out, res=case.res, k=case.k, up=case.up,
                      down=case.down, demod=case.demod, batch=batch, rank=rank, act=act, dtype=dtype,
                      layout="channels_last" if channels_last else "nchw", flops=flops, bytes=nbytes,
                      input_sets=n_sets)
    recs: List[dict] = []
    for name in methods:
        m = METHODS[name]
        skip_reason = compile_reason if name in COMPILED else None
        fn = None
        if skip_reason is None:
            try:
                if name in COMPILED:
                    torch._dynamo.reset()
                kw = {"mode": compile_mode} if name in COMPILED and compile_mode else {}
                kw.update((build_kw or {}).get(name, {}))
                fn = m.build(case, cpu_sets[0].to(dev, dt), dev, **kw)
            except NotApplicable as exc:
                skip_reason = str(exc)
        for mode in modes:
            rec: Dict[str, Any] = dict(common_rec, mode=mode, method=name, median_ms=None, p20_ms=None, p80_ms=None,
                                       reps=None, peak_mb=None, rel_err=None, rel_err_out=None, rel_err_grad=None,
                                       skipped=skip_reason, error=None)
            if fn is not None:
                try:
                    rec.update(_measure(fn, m.grads, name != "base", cpu_sets, dt, dev, mode,
                                        gy, y_ref, g_ref, cpu_reps, timing_kw or {}, cpu_warmup))
                except torch.cuda.OutOfMemoryError:
                    rec["skipped"] = "out of memory"
                except NotApplicable as exc:
                    rec["skipped"] = str(exc)
                except Exception as exc:  # one failing method must not end a long run
                    rec["error"] = f"{type(exc).__name__}: {exc}"[:500]
                finally:
                    if dev.type == "cuda":
                        gc.collect()
                        torch.cuda.empty_cache()
            recs.append(rec)
            status = (f"{rec['median_ms']:.4f} ms" if rec["median_ms"] is not None
                      else f"skipped ({rec['skipped']})" if rec["skipped"] else f"ERROR {rec['error']}")
            log(f"  {case.name} b{batch} r{rank} {act} {dtype} {mode:8s} {name:18s} {status}")
        if name in COMPILED:
            torch._dynamo.reset()
    return recs


def failed_case(case: Case, batch: int, rank: int, act: str, dtype: str, modes: Sequence[str],
                methods: Sequence[str], why: str, skipped: bool = False) -> List[dict]:
    """Records of a case that could not be set up (e.g. out of memory building the inputs), or, with
    `skipped`, of methods left out on purpose (`why` says why)."""
    return [dict(layer=case.name, c_in=case.c_in, c_out=case.c_out, res=case.res, k=case.k, up=case.up,
                 down=case.down, demod=case.demod, batch=batch, rank=rank, act=act, dtype=dtype,
                 flops=case.flops(batch), bytes=None, input_sets=None, mode=mode, method=name, median_ms=None,
                 p20_ms=None, p80_ms=None, reps=None, peak_mb=None, rel_err=None, rel_err_out=None,
                 rel_err_grad=None, skipped=why if skipped else None, error=None if skipped else why)
            for name in methods for mode in modes]


def _measure(fn, grads_of: str, same_function: bool, cpu_sets: List[Inputs], dt, dev, mode: str, gy,
             y_ref, g_ref, cpu_reps: int, timing_kw: dict, cpu_warmup: int = 1) -> dict:
    sets = [s.to(dev, dt) for s in cpu_sets]
    if mode != "forward":
        for s in sets:
            s.requires_grad_(grads_of)
    n_ref = len(sets[0].grad_tensors(grads_of))
    out: Dict[str, Any] = {}

    # correctness on set 0 (fresh call, outside the timed region); base computes another function
    if mode == "forward":
        with torch.no_grad():
            y = fn(sets[0])
    else:
        y = fn(sets[0])
        gs = torch.autograd.grad(y, sets[0].grad_tensors(grads_of), gy)
        if same_function:
            out["rel_err_grad"] = _err([common.rel_err(g, r) for g, r in zip(gs, g_ref[:n_ref])])
        del gs
    if same_function and mode != "backward":
        out["rel_err_out"] = common.rel_err(y, y_ref)
    del y
    out["rel_err"] = _err([out.get("rel_err_out"), out.get("rel_err_grad")])

    if mode == "forward":
        def call(i: int):
            with torch.no_grad():
                return fn(sets[i])
        timing = common.time_fn(call, len(sets), dev, cpu_reps=cpu_reps, cpu_warmup=cpu_warmup, **timing_kw)
        out["peak_mb"] = common.peak_mb(lambda: call(0), dev)
    elif mode == "backward":
        def forward(i: int):  # untimed: the graph whose backward is timed (no retain_graph: compiled
            return fn(sets[i]), sets[i].grad_tensors(grads_of)  # functions donate their buffers)

        def call(arg):
            return torch.autograd.grad(arg[0], arg[1], gy)
        timing = common.time_fn(call, len(sets), dev, cpu_reps=cpu_reps, cpu_warmup=cpu_warmup, setup=forward, **timing_kw)
        arg0 = forward(0)
        out["peak_mb"] = common.peak_mb(lambda: call(arg0), dev)
        del arg0
    else:
        def call(i: int):
            return torch.autograd.grad(fn(sets[i]), sets[i].grad_tensors(grads_of), gy)
        timing = common.time_fn(call, len(sets), dev, cpu_reps=cpu_reps, cpu_warmup=cpu_warmup, **timing_kw)
        out["peak_mb"] = common.peak_mb(lambda: call(0), dev)
    out.update(timing.to_dict())
    return out


# ----------------------------------------------------------------------------- derived metrics

KEY = ("layer", "batch", "rank", "act", "dtype", "mode")


def add_derived(records: List[dict], ceilings: Optional[dict]) -> None:
    """Achieved rates, roofline, overhead over base and speedups, in place."""
    groups: Dict[tuple, Dict[str, dict]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in KEY), {})[r["method"]] = r
    for by in groups.values():
        ms = {m: r["median_ms"] for m, r in by.items() if r["median_ms"]}
        for m, r in by.items():
            t = r["median_ms"]
            for k in ("tflops", "gbps", "pct_peak_flops", "pct_peak_bw", "roofline_ms", "pct_roofline",
                      "overhead_vs_base_ms", "speedup_vs_peft", "speedup_vs_published", "speedup_vs_merged"):
                r.setdefault(k, None)
            if not t:
                continue
            # forward FLOPs; backward (dgrad only, base frozen) ~ the same; fwd+bwd twice
            mult = 2 if r["mode"] == "fwd+bwd" else 1
            r["tflops"] = mult * r["flops"] / (t * 1e-3) / 1e12
            r["gbps"] = mult * r["bytes"] / (t * 1e-3) / 1e9
            if ceilings:
                peak = ceilings["tflops"].get(r["dtype"])
                bw = ceilings.get("gbps")
                if peak and bw:
                    r["pct_peak_flops"] = 100 * r["tflops"] / peak
                    r["pct_peak_bw"] = 100 * r["gbps"] / bw
                    r["roofline_ms"] = mult * max(r["flops"] / (peak * 1e12), r["bytes"] / (bw * 1e9)) * 1e3
                    r["pct_roofline"] = 100 * r["roofline_ms"] / t
            if ms.get("base"):
                r["overhead_vs_base_ms"] = t - ms["base"]
            for ref, key in (("peft", "speedup_vs_peft"), ("published", "speedup_vs_published"),
                             ("merged", "speedup_vs_merged")):
                if ms.get(ref):
                    r[key] = ms[ref] / t


TRAINABLE = ("peft", "published", "shared", "compile-published", "compile-shared")


def candidate(by: Dict[str, dict]) -> Optional[str]:
    """The method the speedup columns describe: ours when it ran, else the fastest trainable torch path."""
    for name in ("ours", "ours-heuristic"):
        if by.get(name, {}).get("median_ms"):
            return name
    timed = [(r["median_ms"], m) for m, r in by.items() if m in TRAINABLE and r.get("median_ms")]
    return min(timed)[1] if timed else None


def markdown(records: List[dict], meta: dict) -> str:
    methods = list(dict.fromkeys(r["method"] for r in records))
    groups: Dict[tuple, Dict[str, dict]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in KEY), {})[r["method"]] = r
    lines = [f"# Layer benchmark: {meta['device']}, {meta['date']}", "",
             f"`{meta['command']}`; torch {meta['torch']}, triton {meta['triton']}, CUDA {meta['cuda']}, "
             f"driver {meta['driver']}. Median ms ({meta['timing']}). "
             "Speedup columns: the candidate (`ours` when it ran, else the fastest trainable torch path) "
             "against peft and published, and merged / candidate (≤ 1: the merged-weight limit is faster).", "",
             "| layer | batch | rank | act | dtype | mode | " + " | ".join(methods)
             + " | candidate | ×peft | ×published | merged/cand | max rel err |",
             "|" + "---|" * 6 + "---:|" * len(methods) + "---|---:|---:|---:|---:|"]

    def f(v, fmt):
        return "—" if v is None else format(v, fmt)

    for key, by in groups.items():
        cells = []
        for m in methods:
            r = by.get(m)
            cells.append("—" if r is None else "n/a" if r["median_ms"] is None else f"{r['median_ms']:.4g}")
        c = candidate(by)
        cr = by.get(c, {}) if c else {}
        errs = [r["rel_err"] for r in by.values() if r.get("rel_err") is not None]
        lines.append("| " + " | ".join(str(v) for v in key) + " | " + " | ".join(cells) + f" | {c or '—'} | "
                     f"{f(cr.get('speedup_vs_peft'), '.2f')} | {f(cr.get('speedup_vs_published'), '.2f')} | "
                     f"{f(cr.get('speedup_vs_merged'), '.2f')} | {f(max(errs) if errs else None, '.1e')} |")
    skipped = {}
    for r in records:
        if r["median_ms"] is None:
            skipped.setdefault(r["method"], set()).add(r["skipped"] or f"error: {r['error']}")
    if skipped:
        lines += ["", "Not timed:"] + [f"- {m}: {'; '.join(sorted(v))}" for m, v in skipped.items()]
    return "\n".join(lines) + "\n"


def plot(records: List[dict], path, title: str) -> Optional[str]:
    """PNG: per mode, the candidate's speedup over peft and over published per layer (geometric
    mean over batch, rank, act and dtype). Returns None, or why no plot was written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    groups: Dict[tuple, Dict[str, dict]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in KEY), {})[r["method"]] = r
    layers = list(dict.fromkeys(r["layer"] for r in records))
    modes = list(dict.fromkeys(r["mode"] for r in records))
    names = set()
    fig, axes = plt.subplots(len(modes), 1, figsize=(max(6, 0.7 * len(layers) + 2), 3.2 * len(modes)), squeeze=False)
    for ax, mode in zip(axes[:, 0], modes):
        vals = {"peft": {}, "published": {}}
        for key, by in groups.items():
            if key[5] != mode:
                continue
            c = candidate(by)
            if c is None:
                continue
            names.add(c)
            for ref in vals:
                s = by[c].get(f"speedup_vs_{ref}")
                if s:
                    vals[ref].setdefault(key[0], []).append(s)
        width = 0.38
        for j, (ref, color) in enumerate((("peft", "tab:blue"), ("published", "tab:orange"))):
            ys = [math.exp(statistics.fmean(map(math.log, vals[ref][la]))) if vals[ref].get(la) else 0.0
                  for la in layers]
            ax.bar([i + (j - 0.5) * width for i in range(len(layers))], ys, width, label=f"vs {ref}", color=color)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels(layers, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("speedup (×)")
        ax.set_title(f"{mode}", fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}\ncandidate: {', '.join(sorted(names)) or '—'} (geomean over batch/rank/act/dtype)",
                 fontsize=9)
    fig.tight_layout()
    import io

    from fastlora.io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return None


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench layers", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="methods: " + ", ".join(f"{m.name} ({m.doc})" for m in METHODS.values()))
    p.add_argument("--quick", action="store_true",
                   help="CPU: the tiny ladder, batch 2, rank 1,4; CUDA: five representative layers, batch 4,16")
    p.add_argument("--ladder", default=None, choices=sorted(LADDERS), help="layer ladder (default 256; quick on CPU)")
    p.add_argument("--layers", default=None, help="comma-separated layer names of the ladder")
    p.add_argument("--batch", default=None, help="default 4,8,16,32 (CUDA), 2 (CPU)")
    p.add_argument("--rank", default=None, help="default 1,4,8,16 (CUDA), 1,4 (CPU)")
    p.add_argument("--act", default=None, help=f"of {','.join(ACT_SETTINGS)} (default all; CPU: inner,both,lora)")
    p.add_argument("--dtype", default=None, help="of fp32 (TF32 off), tf32, bf16, fp16 (default fp32,tf32,bf16; "
                                                 "CPU: fp32)")
    p.add_argument("--mode", default=None, help=f"of {','.join(MODES)} (default all)")
    p.add_argument("--methods", default=None, help=f"default {','.join(DEFAULT_METHODS)}")
    p.add_argument("--compile", default="auto", choices=("auto", "on", "off"),
                   help="torch.compile methods: auto = on CUDA only (on the CPU compiling is slow)")
    p.add_argument("--no-compile", dest="compile", action="store_const", const="off")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile mode (default max-autotune-no-cudagraphs on CUDA: slow to compile, "
                        "about a minute per case; 'default' compiles much faster)")
    p.add_argument("--warmup-ms", type=float, default=25.0, help="CUDA: warm-up time per measurement")
    p.add_argument("--rep-ms", type=float, default=100.0, help="CUDA: timed time per measurement")
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no new case after this many seconds; write what was measured (for time-limited "
                        "GPU sessions)")
    p.add_argument("--no-measure-ceilings", action="store_true",
                   help="use fixed H100 ceilings instead of measuring them on this GPU")
    p.add_argument("--cpu-reps", type=int, default=5, help="timed repetitions per case on the CPU")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 on the CPU: steadier)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--out", default=None, help="results folder (default bench/results)")
    p.add_argument("--overwrite", action="store_true", help="replace results of the same device, date and kind")
    p.add_argument("--kind", default="layers", help="file-name suffix (default layers)")
    return p


@dataclass
class Plan:
    """What one `bench layers` invocation measures, resolved from its options and the device."""

    dev: torch.device
    lad: str
    cases: list
    batches: list
    ranks: list
    acts: list
    dtypes: list
    modes: list
    methods: list
    compile_reason: Optional[str]


def make_plan(args: argparse.Namespace) -> Plan:
    """The matrix of this run: the options, else the defaults for the device (a quick CPU matrix off CUDA)."""
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = dev.type == "cuda"
    lad = args.ladder or ("quick" if not cuda else "256")
    only = common.parse_list(args.layers)
    if args.quick and cuda and not only and lad == "256":
        only = ["conv512@4", "up512@16", "conv512@32", "conv128@256", "torgb512@32"]
    batches = common.parse_list(args.batch, int) or ([4, 16] if args.quick and cuda else [4, 8, 16, 32] if cuda
                                                     else [2])
    ranks = common.parse_list(args.rank, int) or ([1, 8] if args.quick and cuda else [1, 4, 8, 16] if cuda
                                                  else [1, 4])
    acts = common.parse_list(args.act) or (["inner", "both", "lora"] if not cuda or args.quick
                                           else ["inner", "both", "none", "lora"])
    dtypes = common.parse_list(args.dtype) or (["fp32", "tf32", "bf16"] if cuda else ["fp32"])
    modes = common.parse_list(args.mode) or list(MODES)
    methods = common.parse_list(args.methods) or list(DEFAULT_METHODS)
    bad = ([a for a in acts if a not in ACT_SETTINGS] + [d for d in dtypes if d not in DTYPES]
           + [m for m in modes if m not in MODES] + [m for m in methods if m not in METHODS])
    if bad:
        raise SystemExit(f"unknown value(s) {bad}; acts {ACT_SETTINGS}, dtypes {tuple(DTYPES)}, modes {MODES}, "
                         f"methods {tuple(METHODS)}")
    if not cuda and "tf32" in dtypes:
        raise SystemExit("tf32 is a CUDA setting; on the CPU use fp32 (or bf16)")
    compile_reason = None
    if args.compile == "off" or (args.compile == "auto" and not cuda):
        compile_reason = ("torch.compile not run: " + ("--no-compile" if args.compile == "off" else
                          "off by default on the CPU (slow to compile; pass --compile on)"))
    return Plan(dev, lad, ladder(lad, only), batches, ranks, acts, dtypes, modes, methods, compile_reason)


def run_meta(plan: Plan, args: argparse.Namespace, argv: Sequence[str]) -> dict:
    """Environment, ceilings, timing method and the planned matrix, recorded with the results."""
    cuda = plan.dev.type == "cuda"
    meta = common.environment(plan.dev, "python -m bench layers " + shlex.join(argv))
    if cuda:
        torch.backends.cudnn.benchmark = True
        meta["ceilings"] = common.H100_CEILINGS if args.no_measure_ceilings else common.measure_ceilings(plan.dev)
        meta["timing"] = ("CUDA events, warm-up incl. autotuning/compile, L2 flushed (256 MB) before each rep, "
                          "inputs rotated over ≥2 sets")
    else:
        meta["ceilings"] = None
        meta["timing"] = f"CPU wall clock, {args.cpu_reps} reps after 1 warm-up; reference paths only"
    meta.update(ladder=plan.lad, layers=[c.name for c in plan.cases], batches=plan.batches, ranks=plan.ranks,
                acts=plan.acts, dtypes=plan.dtypes, modes=plan.modes, methods=plan.methods, seed=args.seed,
                compile=plan.compile_reason or "on",
                flops_note="FLOPs of the base conv only (2·N·P·C_out·C_in·k², P = output pixels, input pixels "
                           "for up); bytes = x + y + W once; fwd+bwd counts twice",
                cases=[c.to_dict() for c in plan.cases])
    return meta


def measure(plan: Plan, args: argparse.Namespace, meta: dict) -> List[dict]:
    """Every case of the plan (failed cases recorded as such), within --budget-s."""
    cuda = plan.dev.type == "cuda"
    t0 = time.perf_counter()
    records: List[dict] = []
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    grid = [(c, b, r, a, d) for c in plan.cases for b in plan.batches for r in plan.ranks for a in plan.acts
            for d in plan.dtypes]
    timing_kw = {"warmup_ms": args.warmup_ms, "rep_ms": args.rep_ms} if cuda else {}
    compile_mode = args.compile_mode or ("max-autotune-no-cudagraphs" if cuda else "default")
    meta.update(compile_mode=compile_mode, timing_options=timing_kw, cases_planned=len(grid), stopped_early=None)
    try:
        for i, (case, batch, rank, act, dtype) in enumerate(grid):
            if args.budget_s is not None and time.perf_counter() - t0 > args.budget_s:
                meta["stopped_early"] = f"--budget-s {args.budget_s}: {i} of {len(grid)} cases measured"
                log(meta["stopped_early"])
                break
            try:
                recs = run_case(case, batch, rank, act, dtype, plan.modes, plan.methods, plan.dev,
                                compile_reason=plan.compile_reason, seed=args.seed, cpu_reps=args.cpu_reps, log=log,
                                timing_kw=timing_kw, compile_mode=compile_mode)
            except Exception as exc:  # e.g. out of memory building the inputs or the float64 reference
                why = f"case failed: {type(exc).__name__}: {exc}"[:500]
                log(f"  {case.name} b{batch} r{rank} {act} {dtype}: {why}")
                recs = failed_case(case, batch, rank, act, dtype, plan.modes, plan.methods, why)
                if cuda:
                    torch.cuda.empty_cache()
            records.extend({"device": meta["device"], "torch": meta["torch"], "triton": meta["triton"], **r}
                           for r in recs)
    finally:
        if cuda:
            _tf32(False)
    meta["wall_s"] = round(time.perf_counter() - t0, 1)
    return records


def main(argv: Optional[Sequence[str]] = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    plan = make_plan(args)
    if plan.dev.type != "cuda" or args.threads:
        torch.set_num_threads(args.threads or 1)
    stem = common.result_stem(args.out, plan.dev, args.kind)
    common.check_writable(stem, (".json", ".md", ".png"), args.overwrite)
    meta = run_meta(plan, args, argv)
    records = measure(plan, args, meta)
    add_derived(records, meta["ceilings"])
    report = {"meta": meta, "records": records}
    md = markdown(records, meta)
    files = common.write_outputs(stem, report, md)
    why = plot(records, stem.with_suffix(".png"), f"{meta['device']} {meta['date']}")
    if why is None:
        files.append(stem.with_suffix(".png"))
    else:
        print(f"no plot: {why}", file=sys.stderr)
    print(md)
    print("wrote " + ", ".join(str(f) for f in files))
    report["files"] = [str(f) for f in files]
    return report
