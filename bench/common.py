"""Shared pieces of the benchmarks: timing, peak memory, environment record, ceilings, output files.

Timing on CUDA (METHOD.md, prior-art notes §8): warm-up calls first (they include Triton
autotuning and torch.compile), then many repetitions, each timed with a pair of CUDA events
after the L2 cache was flushed by overwriting a 256 MB buffer, while the closure rotates over
several input sets; median and 20th/80th percentiles. On the CPU: `time.perf_counter` around
each call, a few repetitions.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
L2_FLUSH_BYTES = 256 * 2 ** 20

# measured on a lent H100 (bf16 8192³ matmul, device-to-device copy).
H100_CEILINGS = {"tflops": {"bf16": 798.0, "tf32": 399.0, "fp32": 54.0}, "gbps": 3000.0,
                 "source": "H100, measured earlier ( bf16 798 TFLOP/s, 3.0 TB/s); tf32 and fp32 are the datasheet "
                           "494.7 and 66.9 TFLOP/s scaled by the measured/datasheet bf16 ratio 0.807 (estimates)"}


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int
    warmup: int

    def to_dict(self) -> dict:
        return asdict(self)


def percentile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 1]."""
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _summary(times_ms: List[float], warmup: int) -> Timing:
    return Timing(statistics.median(times_ms), percentile(times_ms, 0.2), percentile(times_ms, 0.8),
                  len(times_ms), warmup)


def time_cpu(fn: Callable[[Any], Any], n_sets: int = 1, *, warmup: int = 1, reps: int = 5,
             setup: Optional[Callable[[int], Any]] = None, sync: Optional[Callable[[], Any]] = None) -> Timing:
    """Wall-clock time of fn(setup(i)) (i rotating over n_sets input sets; setup untimed), after
    `warmup` calls. `sync` (e.g. torch.cuda.synchronize) runs inside the timed region after each call,
    for work that is asynchronous (wall time of a whole call, copies included)."""
    setup = setup or (lambda i: i)
    sync = sync or (lambda: None)
    for i in range(warmup):
        fn(setup(i % n_sets))
    sync()
    ts = []
    for i in range(reps):
        arg = setup(i % n_sets)
        t0 = time.perf_counter()
        fn(arg)
        sync()
        ts.append((time.perf_counter() - t0) * 1e3)
        del arg
    return _summary(ts, warmup)


_flush_buf: Dict[str, torch.Tensor] = {}


def _flush_buffer(dev: torch.device) -> torch.Tensor:
    key = str(dev)
    if key not in _flush_buf:
        _flush_buf[key] = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=dev)
    return _flush_buf[key]


def time_cuda(fn: Callable[[Any], Any], n_sets: int = 1, *, device: Optional[torch.device] = None,
              warmup_ms: float = 25.0, rep_ms: float = 100.0, min_reps: int = 10, max_reps: int = 1000,
              flush: bool = True, setup: Optional[Callable[[int], Any]] = None) -> Timing:
    """CUDA-event time of fn(setup(i)), i rotating over n_sets input sets, L2 flushed before each rep.

    `setup` (default: identity) runs outside the timed region (e.g. the forward pass whose
    backward is timed). At least 8 warm-up calls (the first compiles and autotunes), more until
    `warmup_ms`; the repetition count fills about `rep_ms` of measured time (clamped to
    [min_reps, max_reps])."""
    dev = device or torch.device("cuda")
    setup = setup or (lambda i: i)
    buf = _flush_buffer(dev) if flush else None
    torch.cuda.synchronize(dev)
    for i in range(3):
        fn(setup(i % n_sets))
    torch.cuda.synchronize(dev)
    est_ms = []
    for i in range(5):
        arg = setup(i % n_sets)
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn(arg)
        e.record()
        e.synchronize()
        est_ms.append(s.elapsed_time(e))
        del arg
    est = max(statistics.median(est_ms), 1e-3)
    extra = int(min(max(warmup_ms / est, 0), 200))
    for i in range(extra):
        fn(setup(i % n_sets))
    reps = int(min(max(rep_ms / est, min_reps), max_reps))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        arg = setup(i % n_sets)
        if buf is not None:
            buf.zero_()
        starts[i].record()
        fn(arg)
        ends[i].record()
        del arg
    torch.cuda.synchronize(dev)
    return _summary([s.elapsed_time(e) for s, e in zip(starts, ends)], 8 + extra)


def time_fn(fn: Callable[[Any], Any], n_sets: int, dev: torch.device, *, cpu_reps: int = 5,
            cpu_warmup: int = 1, setup: Optional[Callable[[int], Any]] = None, **cuda_kw) -> Timing:
    if dev.type == "cuda":
        return time_cuda(fn, n_sets, device=dev, setup=setup, **cuda_kw)
    return time_cpu(fn, n_sets, warmup=cpu_warmup, reps=cpu_reps, setup=setup)


def peak_mb(fn: Callable[[], Any], dev: torch.device) -> Optional[float]:
    """Memory allocated by one call beyond what was allocated before it (CUDA; None on the CPU,
    where the caching allocator's statistics do not exist)."""
    if dev.type != "cuda":
        return None
    torch.cuda.synchronize(dev)
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    out = fn()
    torch.cuda.synchronize(dev)
    peak = (torch.cuda.max_memory_allocated(dev) - base) / 2 ** 20
    del out
    return peak


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64 (NaN/inf in out give inf)."""
    o = out.detach().to(ref.device, torch.float64)
    if not torch.isfinite(o).all():
        return float("inf")
    den = float(ref.norm())
    return float((o - ref).norm()) / (den if den > 0 else 1.0)


# ----------------------------------------------------------------------------- environment

def _nvidia_smi(fields: str) -> Optional[str]:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(dev: torch.device, command: Optional[str] = None) -> dict:
    """Device, driver and library versions of this run (and the command line that produced it)."""
    try:
        import triton

        triton_version: Optional[str] = triton.__version__
    except ImportError:
        triton_version = None
    env = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({_cpu_name()})",
           "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "python": platform.python_version(), "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
           "date": _dt.date.today().isoformat(),
           "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "command": command or " ".join(shlex.quote(a) for a in ["python", "-m", "bench", *sys.argv[1:]]),
           "driver": None}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        env.update(sm_count=props.multi_processor_count, gpu_memory_gb=round(props.total_memory / 2 ** 30, 1),
                   capability=f"{props.major}.{props.minor}")
        smi = _nvidia_smi("driver_version,clocks.sm,clocks.mem,clocks.max.sm,power.limit")
        if smi:
            parts = [p.strip() for p in smi.split(",")]
            env["driver"] = parts[0]
            env["clocks_as_found"] = dict(zip(["sm_mhz", "mem_mhz", "max_sm_mhz", "power_limit"], parts[1:]))
    return env


def device_slug(dev: torch.device) -> str:
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def measure_ceilings(dev: torch.device) -> dict:
    """Measured matrix-product rates (8192³ bf16; 8192³ fp32 with TF32 on and off) and copy bandwidth
    (1 GiB device-to-device, read + write bytes), random data (METHOD.md: 'two numbers first')."""
    n = 8192
    saved = torch.backends.cuda.matmul.allow_tf32
    res: dict = {"tflops": {}, "source": "measured by bench (median of CUDA-event timings)"}
    try:
        for key, dt, tf32 in (("bf16", torch.bfloat16, False), ("tf32", torch.float32, True),
                              ("fp32", torch.float32, False)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a = torch.randn(n, n, device=dev, dtype=dt)
            b = torch.randn(n, n, device=dev, dtype=dt)
            t = time_cuda(lambda i: a @ b, device=dev, rep_ms=200 if key != "fp32" else 400, min_reps=5,
                          max_reps=50, flush=False)
            res["tflops"][key] = round(2 * n ** 3 / (t.median_ms * 1e-3) / 1e12, 1)
            del a, b
        src = torch.randn(2 ** 28, device=dev)
        dst = torch.empty_like(src)
        t = time_cuda(lambda i: dst.copy_(src), device=dev, min_reps=10, max_reps=50, flush=False)
        res["gbps"] = round(2 * src.numel() * 4 / (t.median_ms * 1e-3) / 1e9, 1)
        del src, dst
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
        torch.cuda.empty_cache()
    return res


# ----------------------------------------------------------------------------- output files

def _clean(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def result_stem(out_dir: Optional[os.PathLike], dev: torch.device, kind: str) -> Path:
    """bench/results/<device-slug>-<YYYY-MM-DD>-<kind> (or the same name under out_dir)."""
    folder = Path(out_dir) if out_dir is not None else RESULTS_DIR
    return folder / f"{device_slug(dev)}-{_dt.date.today().isoformat()}-{kind}"


def check_writable(stem: Path, suffixes: Sequence[str], overwrite: bool) -> None:
    """Refuse to replace earlier results unless `overwrite` (checked before any work is done)."""
    existing = [str(stem.with_suffix(s)) for s in suffixes if stem.with_suffix(s).exists()]
    if existing and not overwrite:
        raise SystemExit(f"refusing to overwrite {', '.join(existing)}; pass --overwrite or choose --out DIR")


def write_json(path: os.PathLike, obj: Any) -> Path:
    """`obj` as indented JSON (non-finite floats as null), written atomically."""
    from fastlora.io import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(_clean(obj), indent=1, allow_nan=False) + "\n").encode())
    return path


def write_text(path: os.PathLike, text: str) -> Path:
    """A text file, written atomically."""
    from fastlora.io import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode())
    return path


def write_outputs(stem: Path, report: dict, markdown: str) -> List[Path]:
    """The JSON report and the markdown table, each written atomically."""
    return [write_json(stem.with_suffix(".json"), report), write_text(stem.with_suffix(".md"), markdown)]


def parse_list(text: Optional[str], conv: Callable[[str], Any] = str) -> Optional[list]:
    if text is None:
        return None
    return [conv(v.strip()) for v in text.split(",") if v.strip()]
