"""Static compile report: every fused kernel compiled offline for sm_90a (no GPU needed).

    python -m bench compile --out DIR [--layers conv512@16,...] [--batch 4,16] [--dtype bf16,fp32]
                            [--pass forward,backward] [--adapter llora-inner,llora-both] [--jobs N]

The real launchers run on meta tensors inside `kernels.common.record` (the tile heuristic sees a
132-SM H100/H200), so exactly the kernels, grids and configurations a GPU run would launch for the
StyleGAN2-256 ladder are compiled with Triton's bundled ptxas, and each cubin is disassembled with
its bundled cuobjdump. DIR/compile.json holds one record per kernel launch x case; DIR/cubins/ the
cubins. SASS statistics per kernel: registers, spill bytes (local stores), shared memory, the MMA
instruction kind, 16-byte pipelined (LDGSTS .128) and plain (LDG .128) global loads, and scalar
16-bit global loads (LDG .U16/.S16).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

SMS = 132  # H100 SXM and H200
TARGET_ARCH = 90
DTYPES = ("bf16", "fp32")
PASSES = ("forward", "backward")
ADAPTERS = ("llora-inner", "llora-both")  # the default (factorised backward) and the published (full-G backward)


def _setup() -> None:
    """Compiling needs the real Triton front end (not the interpreter)."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") and "kernels" in sys.modules:
        raise RuntimeError("bench compile must run in a fresh process without TRITON_INTERPRET=1")
    os.environ["TRITON_INTERPRET"] = "0"


def tools_dir() -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


# ----------------------------------------------------------------------------- launches of one case

def _adapter(kind: str, c_in: int, c_out: int, k: int, dev: str, dtype) -> Any:
    import torch

    from fastlora import LLoRA

    act = kind.split("-")[1]
    f = dict(device=dev, dtype=dtype)
    return LLoRA(torch.empty(c_in, 1, **f), torch.empty(c_out, 1, **f), torch.empty(1, 1, k * k, **f), alpha=0.1,
                 act=act)


def case_launches(case, batch: int, dtype: str, pass_: str, adapter: str) -> list:
    """The kernel launches of one layer case (forward, or the first-order backward of a training step with a
    frozen base: gradients of x, style and the adapter), recorded on meta tensors."""
    import torch

    from fastlora import _triton
    from kernels import common

    dt = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    dev = "meta"
    cl = torch.channels_last
    x = torch.empty(batch, case.c_in, case.in_res, case.in_res, device=dev, dtype=dt).to(memory_format=cl)
    w = torch.empty(case.c_out, case.c_in, case.k, case.k, device=dev, dtype=dt)
    s = torch.empty(batch, case.c_in, device=dev, dtype=dt)
    bias = torch.empty(case.c_out, device=dev, dtype=dt)
    ad = _adapter(adapter, case.c_in, case.c_out, case.k, dev, dt)
    kw: Dict[str, Any] = dict(scale=1.0 / (case.c_in * case.k ** 2) ** 0.5, demodulate=case.demod, up=case.up,
                              down=case.down, bias=bias)
    if case.demod:  # StyledConv: noise (shared map, per-layer strength) and leaky-ReLU
        kw.update(noise=torch.empty(1, 1, case.res, case.res, device=dev, dtype=dt), activation="lrelu")
    else:  # ToRGB: the upsampled skip
        kw.update(skip=torch.empty(batch, case.c_out, case.res, case.res, device=dev, dtype=dt).to(memory_format=cl))
    with common.record(SMS) as rec:
        if pass_ == "forward":
            y = _triton.modulated_conv2d(x, w, s, adapter=ad, **kw)
            _mark_intermediates(rec, [x, w, s, y, *ad.tensors(), *[v for v in kw.values() if torch.is_tensor(v)]],
                                batch)
        else:
            leaves = [x.requires_grad_(), s.requires_grad_(), ad.A.requires_grad_(), ad.B.requires_grad_(),
                      ad.B_inst.requires_grad_()]
            y = _triton.modulated_conv2d(x, w, s, adapter=ad, **kw)
            n_fwd = len(rec)
            torch.autograd.grad(y, leaves, torch.empty_like(y))
            del rec[:n_fwd]
    return list(rec)


def _storage(t) -> int:
    return t.untyped_storage()._cdata


def _mark_intermediates(launches: list, io: list, batch: int) -> None:
    """Tag each launch with the bytes of fp32 activation-shaped intermediates ([N, C, H, W] buffers that are
    neither inputs nor outputs of the op, passed to two or more launches) it writes or reads; the first
    launch that touches such a buffer carries its size."""
    import torch

    known = {_storage(t) for t in io}
    seen: Dict[int, list] = {}
    for i, lc in enumerate(launches):
        for a in lc.args:
            if torch.is_tensor(a) and a.dim() == 4 and a.shape[0] == batch and _storage(a) not in known:
                seen.setdefault(_storage(a), [a, set()])[1].add(i)
    for a, users in seen.values():
        if len(users) >= 2 and a.dtype == torch.float32:
            first = launches[min(users)]
            first.meta["fp32_intermediate"] = first.meta.get("fp32_intermediate", 0) + a.numel() * 4


# ----------------------------------------------------------------------------- compiling one launch

_TY = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.int64": "i64",
       "torch.int32": "i32", "torch.uint8": "u8", "torch.bool": "i1"}


def _arg_spec(v: Any):
    """(type string or None for a constexpr, is-16-divisible) as Triton's launcher specialises the argument."""
    import torch

    if isinstance(v, torch.Tensor):
        aligned = (v.storage_offset() * v.element_size()) % 16 == 0  # allocations themselves are 256-aligned
        return "*" + _TY[str(v.dtype)], aligned
    if isinstance(v, bool):
        return "u1", False
    if isinstance(v, int):
        if v == 1:
            return None, False
        return ("i32" if -2 ** 31 <= v < 2 ** 31 else "i64"), v % 16 == 0
    if isinstance(v, float):
        return "fp32", False
    if v is None:
        return None, False
    raise TypeError(f"cannot specialise a launch argument of type {type(v).__name__}")


def compile_job(launch) -> dict:
    """A picklable description of what to compile for one launch (the specialisation key included)."""
    fn = launch.fn
    names = fn.arg_names
    params = [p for p in names if p not in launch.consts]
    if len(params) != len(launch.args):
        raise ValueError(f"{fn.__name__}: {len(launch.args)} positional arguments for {len(params)} parameters")
    sig, consts, div = {}, {}, []
    for nm, v in zip(params, launch.args):
        ty, d = _arg_spec(v)
        if ty is None:
            sig[nm] = "constexpr"
            consts[nm] = v
        else:
            sig[nm] = ty
            if d:
                div.append(nm)
    for nm, v in launch.consts.items():
        sig[nm] = "constexpr"
        consts[nm] = v
    job = {"module": fn.fn.__module__, "name": fn.__name__, "sig": sig, "consts": consts, "div": sorted(div),
           "num_warps": launch.num_warps, "num_stages": launch.num_stages}
    job["key"] = hashlib.sha1(json.dumps(job, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return job


def _sass_stats(cubin: Path) -> dict:
    tools = tools_dir()
    sass = subprocess.run([str(tools / "cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True,
                          check=True).stdout
    res = subprocess.run([str(tools / "cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True,
                         check=True).stdout
    ops = Counter(re.findall(r"^\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)", sass, re.M))

    def count(pred) -> int:
        return sum(n for op, n in ops.items() if pred(op))

    spill = 0
    for op, n in ops.items():
        if op.startswith("STL"):
            width = re.search(r"\.(64|128)\b", op)
            spill += n * (int(width.group(1)) // 8 if width else 4)
    reg = re.search(r"REG:(\d+)", res)
    return {
        "regs": int(reg.group(1)) if reg else None,
        "spill_bytes": spill,
        "hgmma": count(lambda o: o.startswith("HGMMA")),
        "hmma": count(lambda o: o.startswith("HMMA")),
        "ffma": count(lambda o: o.startswith("FFMA")),
        "ldgsts128": count(lambda o: o.startswith("LDGSTS") and ".128" in o),
        "ldgsts": count(lambda o: o.startswith("LDGSTS")),
        "ldg128": count(lambda o: o.startswith("LDG.") and ".128" in o),
        "ldg_scalar16": count(lambda o: o.startswith("LDG.") and (".U16" in o or ".S16" in o)),
        "stg_scalar16": count(lambda o: o.startswith("STG.") and (".U16" in o or ".S16" in o)),
        "tma": count(lambda o: o.startswith("UTMALDG") or o.startswith("UBLKCP")),
    }


def run_job(job: dict, cubin_dir: str) -> dict:
    """Compile one job for sm_90a (Triton's cache makes repeats cheap) and return its SASS statistics."""
    _setup()
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(job["module"]), job["name"])
    names = fn.arg_names
    consts = {(names.index(k),): v for k, v in job["consts"].items()}
    attrs = {(names.index(k),): [["tt.divisibility", 16]] for k in job["div"]}
    src = ASTSource(fn, job["sig"], constexprs=consts, attrs=attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", TARGET_ARCH, 32),
                            options={"num_warps": job["num_warps"], "num_stages": job["num_stages"]})
    path = Path(cubin_dir) / f"{job['name'].lstrip('_')}-{job['key']}.cubin"
    path.write_bytes(kernel.asm["cubin"])
    stats = _sass_stats(path)
    stats["smem_bytes"] = int(kernel.metadata.shared)
    stats["cubin"] = str(path)
    stats["has_dot"] = "tl.dot(" in fn.src
    return stats


def _mma(st: dict) -> str:
    if st["hgmma"]:
        return "HGMMA"
    if st["hmma"]:
        return "HMMA"
    if st["has_dot"]:
        return "FFMA"
    return "none"


# ----------------------------------------------------------------------------- the report

def _fp32_intermediate_bytes(launches: list) -> int:
    """Bytes of fp32 activation-shaped intermediates the case passes between its kernels (forward cases;
    found by `_mark_intermediates` from the recorded launch arguments)."""
    return int(sum(lc.meta.get("fp32_intermediate", 0) for lc in launches))


def build_report(cases: Sequence, batches: Sequence[int], dtypes: Sequence[str], passes: Sequence[str],
                 adapters: Sequence[str], out: Path, jobs: int = 1, log=print) -> List[dict]:
    """Compile every launch of every case and write out/compile.json (+ out/cubins/). Returns the records."""
    _setup()
    cubins = out / "cubins"
    cubins.mkdir(parents=True, exist_ok=True)
    planned = []
    for case in cases:
        for b in batches:
            for dt in dtypes:
                for ps in passes:
                    for ad in (adapters if ps == "backward" else adapters[:1]):
                        launches = case_launches(case, b, dt, ps, ad)
                        planned.append((case, b, dt, ps, ad, launches))
    unique: Dict[str, dict] = {}
    for *_, launches in planned:
        for lc in launches:
            job = compile_job(lc)
            lc.meta["_key"] = job["key"]
            unique.setdefault(job["key"], job)
    log(f"{len(planned)} cases, {sum(len(p[-1]) for p in planned)} launches, {len(unique)} distinct kernels")
    stats: Dict[str, dict] = {}
    keys = list(unique)
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            for key, st in zip(keys, pool.map(run_job, [unique[k] for k in keys], [str(cubins)] * len(keys))):
                stats[key] = st
                log(f"  compiled {unique[key]['name']} [{len(stats)}/{len(keys)}]")
    else:
        for key in keys:
            stats[key] = run_job(unique[key], str(cubins))
            log(f"  compiled {unique[key]['name']} [{len(stats)}/{len(keys)}]")
    records = []
    for case, b, dt, ps, ad, launches in planned:
        inter = _fp32_intermediate_bytes(launches)
        for lc in launches:
            st = stats[lc.meta["_key"]]
            cfg = {k: v for k, v in lc.meta.items()
                   if not k.startswith("_") and k not in ("fp32_intermediate", "splitk_workspace")}
            cfg.update(warps=lc.num_warps, stages=lc.num_stages)
            records.append({
                "kernel": lc.fn.__name__.lstrip("_"), "role": lc.tag, "pass": lc.meta.get("pass", ps),
                "layer": case.name, "res": case.res, "batch": b, "dtype": dt, "adapter": ad,
                "config": cfg, "grid_ctas": lc.ctas, "regs": st["regs"], "spill_bytes": st["spill_bytes"],
                "smem_bytes": st["smem_bytes"], "mma": _mma(st), "ldgsts128": st["ldgsts128"], "ldg128": st["ldg128"],
                "ldg_scalar16": st["ldg_scalar16"], "stg_scalar16": st["stg_scalar16"], "tma": st["tma"],
                "fp32_intermediate_bytes": inter, "splitk_workspace_bytes": lc.meta.get("splitk_workspace", 0),
                "cubin": os.path.relpath(st["cubin"], out),
            })
    (out / "compile.json").write_text(json.dumps({"target": f"sm_{TARGET_ARCH}a", "sms": SMS,
                                                  "triton": _triton_version(), "records": records}, indent=1))
    return records


def _triton_version() -> str:
    import triton

    return triton.__version__


GEMM_ROLES = ("conv", "dgrad", "wgrad")  # the implicit GEMMs over activations (the rest: prologue, blur, reductions)


def check_targets(records: Sequence[dict], sms: int = SMS) -> Dict[str, List[str]]:
    """The issue's static targets over a report; {target: [violations]} (empty lists: met).

    - hgmma: every bf16 implicit-GEMM kernel (conv, dgrad, wgrad) of a layer at >= 16 px uses HGMMA;
    - no_spill / no_scalar16: every bf16 kernel of a layer at >= 16 px has 0 spill bytes and no scalar 16-bit
      global load;
    - no_fp32_intermediate: no bf16 up layer's forward passes an fp32 activation-sized intermediate between its
      kernels (the split-K workspace of 4-16 px layers is reported apart, as splitk_workspace_bytes);
    - splitk_fill: at 4-16 px and batch 4, the forward conv of every 3x3 layer launches >= sms/2 CTAs.
    """
    out: Dict[str, List[str]] = {"hgmma": [], "no_spill": [], "no_scalar16": [], "no_fp32_intermediate": [],
                                 "splitk_fill": []}
    for r in records:
        tag = f"{r['kernel']}/{r['role']} {r['pass']} {r['layer']} B{r['batch']} {r['dtype']} {r.get('adapter', '')}"
        big = r["res"] >= 16 and r["dtype"] == "bf16"
        if big and r["role"] in GEMM_ROLES and r["mma"] != "HGMMA":
            out["hgmma"].append(f"{tag}: {r['mma']}")
        if big and r["spill_bytes"]:
            out["no_spill"].append(f"{tag}: {r['spill_bytes']} B")
        if big and r["ldg_scalar16"]:
            out["no_scalar16"].append(f"{tag}: {r['ldg_scalar16']}")
        if (r["dtype"] == "bf16" and r["layer"].startswith("up") and r["pass"] == "forward"
                and r["fp32_intermediate_bytes"]):
            out["no_fp32_intermediate"].append(f"{tag}: {r['fp32_intermediate_bytes']} B")
        if (r["res"] <= 16 and r["batch"] == 4 and r["role"] == "conv" and r["pass"] == "forward"
                and not r["layer"].startswith("torgb") and r["grid_ctas"] < sms // 2):
            out["splitk_fill"].append(f"{tag}: {r['grid_ctas']} CTAs")
    for k in out:
        out[k] = sorted(set(out[k]))
    return out


def markdown_table(records: Sequence[dict]) -> str:
    """One row per distinct (kernel, pass, config, statistics), listing the cases it serves."""
    rows: Dict[tuple, List[str]] = {}
    for r in records:
        cfg = r["config"]
        key = (r["kernel"], r["pass"], r["dtype"], json.dumps(cfg, sort_keys=True), r["regs"], r["spill_bytes"],
               r["smem_bytes"], r["mma"], r["ldgsts128"], r["ldg128"], r["ldg_scalar16"])
        rows.setdefault(key, []).append(f"{r['layer']}/B{r['batch']}")
    out = ["| kernel | pass | dtype | config | regs | spill B | smem KB | MMA | LDGSTS.128 | LDG.128 | LDG.U16 | cases |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, cases in rows.items():
        kernel, ps, dt, cfg, regs, spill, smem, mma, l1, l2, l3 = key
        c = json.loads(cfg)
        cfg_s = " ".join(f"{k}={v}" for k, v in c.items())
        shown = ", ".join(cases[:4]) + (f" (+{len(cases) - 4})" if len(cases) > 4 else "")
        out.append(f"| {kernel} | {ps} | {dt} | {cfg_s} | {regs} | {spill} | {smem / 1024:.0f} | {mma} | {l1} | {l2} "
                   f"| {l3} | {shown} |")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench compile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder (compile.json, compile.md, cubins/)")
    ap.add_argument("--layers", default="", help="comma-separated layer names of the 256 ladder (default: all)")
    ap.add_argument("--batch", default="4,16")
    ap.add_argument("--dtype", default=",".join(DTYPES))
    ap.add_argument("--pass", dest="passes", default=",".join(PASSES))
    ap.add_argument("--adapter", default=",".join(ADAPTERS), help=f"conv adapters of the backward cases {ADAPTERS}")
    ap.add_argument("--jobs", type=int, default=1, help="parallel compiles")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    _setup()
    from bench.cases import ladder

    ap = build_parser()
    a = ap.parse_args(argv)
    cases = ladder("256", [s for s in a.layers.split(",") if s] or None)
    split = lambda s: [v for v in s.split(",") if v]  # noqa: E731
    for v in split(a.dtype):
        if v not in DTYPES:
            ap.error(f"--dtype: {v!r} is not one of {DTYPES}")
    for v in split(a.passes):
        if v not in PASSES:
            ap.error(f"--pass: {v!r} is not one of {PASSES}")
    for v in split(a.adapter):
        if v not in ADAPTERS:
            ap.error(f"--adapter: {v!r} is not one of {ADAPTERS}")
    out = Path(a.out)
    records = build_report(cases, [int(b) for b in split(a.batch)], split(a.dtype), split(a.passes),
                           split(a.adapter), out, jobs=a.jobs)
    targets = check_targets(records)
    summary = ["", "Targets (bf16 kernels at >= 16 px; split-K fill at 4-16 px, batch 4):", ""]
    for name, bad in targets.items():
        summary.append(f"- {name}: {'met' if not bad else f'NOT met ({len(bad)})'}")
        summary += [f"  - {b}" for b in bad[:20]] + ([f"  - ... {len(bad) - 20} more"] if len(bad) > 20 else [])
    (out / "compile.md").write_text(markdown_table(records) + "\n" + "\n".join(summary) + "\n")
    print("\n".join(summary))
    print(f"wrote {out / 'compile.json'} ({len(records)} records) and {out / 'compile.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
