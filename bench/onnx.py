"""Images per second of an exported task: onnxruntime (CPU, CUDA) versus PyTorch (eager, merged, fused).

    python -m bench.onnx --ckpt CKPT --task NAME [--batches 1,16] [--fp16] [--iters 20]

(run it with -m from the repository root: as a script, this file's name would shadow the onnx package.)
Rows, each at every batch size (z input, const noise, one task):
  ort-cpu / ort-cuda  the exported file in onnxruntime (numpy in and out, so CUDA includes the copies);
  torch-eager         the checkpoint's Generator with the task's adapters active, PyTorch reference backend;
  torch-merged        the export module itself (task merged, plain torch ops) in eager PyTorch;
  torch-fused         the Generator with backend "triton" (fused kernels; CUDA with Triton only).
Unavailable rows are recorded with the reason. Timings: median (p20, p80) wall time per batch over
--iters runs after --warmup runs. Results: bench/results/<device>-<date>-onnx.json and .md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _percentile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


def time_fn(fn: Callable[[], Any], warmup: int, iters: int, sync: Optional[Callable[[], None]] = None) -> dict:
    """Median, p20 and p80 seconds per call after `warmup` calls."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "p20_s": _percentile(times, 0.2), "p80_s": _percentile(times, 0.8),
            "iters": iters, "warmup": warmup}


def device_name() -> str:
    """'<gpu>' when CUDA is present, else 'cpu' (slugged for file names)."""
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def environment(threads: int) -> dict[str, Any]:
    import onnx
    import onnxruntime as ort

    env = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count(), "threads": threads, "python": platform.python_version(),
           "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
           "ort_available_providers": ort.get_available_providers(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda_runtime"] = torch.version.cuda
    try:
        import triton  # noqa: F401

        env["triton"] = triton.__version__
    except Exception:
        env["triton"] = None
    return env


def run_bench(ckpt: str, task: str, batches: Sequence[int] = (1, 16), *, dtype: str = "fp32", warmup: int = 5,
              iters: int = 20, threads: Optional[int] = None, out_dir: Optional[Path] = None,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Export `task` of `ckpt` to a temporary file (with its parity check) and time every row."""
    import fastlora
    from colorgan.checkpoint import load_checkpoint
    from export.api import ExportError, export_generator, make_session
    from export.graph import ExportGenerator
    from fastlora.backend import triton_unavailable_reason

    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    tname = None if task == "base" else task
    G, _, _ = load_checkpoint(ckpt, "cpu", tasks=[] if tname is None else [tname], load_d=False)
    rows: list[dict[str, Any]] = []

    def add(name: str, batch: int, timing: Optional[dict] = None, skipped: Optional[str] = None, **extra) -> None:
        row = {"path": name, "batch": batch, **extra}
        if timing:
            row.update(timing, images_per_s=batch / timing["median_s"])
            log(f"  {name:13s} batch {batch:3d}: {row['images_per_s']:10.1f} img/s  "
                f"(median {timing['median_s'] * 1e3:.2f} ms)")
        else:
            row["skipped"] = skipped
            log(f"  {name:13s} batch {batch:3d}: skipped ({skipped})")
        rows.append(row)

    gen = torch.Generator().manual_seed(0)
    zs = {b: torch.randn(b, G.style_dim, generator=gen) for b in batches}
    merged = ExportGenerator(G, tname, dtype=dtype)
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / f"{task}.onnx"
        res = export_generator(G, tname, file, dtype=dtype, batches=(1, 2))
        log(res.summary())

        # PyTorch first, so onnxruntime's spinning worker threads cannot slow it down.
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        sync = torch.cuda.synchronize if dev.type == "cuda" else None
        G, merged = G.to(dev), merged.to(dev)
        if tname is not None:
            fastlora.set_task(G, tname)
        fused_reason = triton_unavailable_reason(G.input.input)
        if fused_reason is None and dev.type != "cuda":
            fused_reason = "the fused kernels are timed on CUDA only (on the CPU they would run in Triton's interpreter)"
        with torch.inference_mode():
            for b in batches:
                z = zs[b].to(dev)
                add("torch-eager", b, time_fn(lambda: G(z, backend="torch"), warmup, iters, sync), device=dev.type)
                add("torch-merged", b, time_fn(lambda: merged(z), warmup, iters, sync), device=dev.type)
                if fused_reason:
                    add("torch-fused", b, skipped=fused_reason)
                else:
                    add("torch-fused", b, time_fn(lambda: G(z, backend="triton"), warmup, iters, sync),
                        device=dev.type)
        G, merged = G.cpu(), None

        sessions: dict[str, Any] = {"ort-cpu": make_session(file, "cpu", threads=threads)}
        cuda_reason = None
        try:
            sessions["ort-cuda"] = make_session(file, "cuda")
        except ExportError as exc:
            cuda_reason = str(exc).split(" (")[0]
        for b in batches:
            feed = {"z": zs[b].numpy()}
            for name in ("ort-cpu", "ort-cuda"):
                s = sessions.get(name)
                if s is None:
                    add(name, b, skipped=cuda_reason)
                    continue
                add(name, b, time_fn(lambda s=s: s.run(["image"], feed), warmup, iters),
                    providers=s.get_providers())
        del sessions, s

    report = {"bench": "onnx", "date": datetime.date.today().isoformat(), "device": device_name(),
              "environment": environment(threads), "checkpoint": str(ckpt), "task": task, "dtype": dtype,
              "generator": G.config(), "base_params": res.base_params, "onnx_bytes": res.size_bytes,
              "adapter_params": res.adapter_params, "parity": {"max_abs": res.max_abs, "rel": res.rel},
              "rows": rows}
    out_dir = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{report['device']}-{report['date']}-onnx"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    report["files"] = [str(stem.with_suffix(".json")), str(stem.with_suffix(".md"))]
    return report


def markdown(report: dict[str, Any]) -> str:
    """A table: one row per path, one column per batch size (images/s, median)."""
    env = report["environment"]
    batches = sorted({r["batch"] for r in report["rows"]})
    paths = list(dict.fromkeys(r["path"] for r in report["rows"]))
    g = report["generator"]
    lines = [f"# ONNX export throughput: {report['device']}, {report['date']}", "",
             f"Generator {g['size']} px, style_dim {g['style_dim']}, n_mlp {g['n_mlp']}, {report['base_params']:,} "
             f"params; task `{report['task']}` ({report['adapter_params']:,} adapter params); {report['dtype']}; "
             f"ONNX file {report['onnx_bytes'] / 2 ** 20:.2f} MB; parity max abs {report['parity']['max_abs']:.2g}, "
             f"rel {report['parity']['rel']:.2g}.",
             f"torch {env['torch']}, onnxruntime {env['onnxruntime']}, {env['threads']} thread(s), "
             f"{env.get('gpu') or env['processor']}. Images/s from the median of "
             f"{report['rows'][0].get('iters', '?')} runs after warm-up.", "",
             "| path | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "|---|" + "---:|" * len(batches)]
    for p in paths:
        cells = []
        for b in batches:
            r = next((r for r in report["rows"] if r["path"] == p and r["batch"] == b), None)
            cells.append("—" if r is None or "images_per_s" not in r else f"{r['images_per_s']:.1f}")
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    skipped = {r["path"]: r["skipped"] for r in report["rows"] if r.get("skipped")}
    if skipped:
        lines += [""] + [f"- {p}: not run ({why})" for p, why in skipped.items()]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.onnx", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="checkpoint folder")
    p.add_argument("--task", required=True, help="task name, or 'base'")
    p.add_argument("--batches", default="1,16", help="comma-separated batch sizes (default 1,16)")
    p.add_argument("--fp16", action="store_true", help="export and time the fp16 file (and fp16 merged torch)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for onnxruntime and torch")
    p.add_argument("--out", default=None, help=f"results folder (default {RESULTS_DIR})")
    args = p.parse_args(argv)
    try:
        batches = [int(b) for b in args.batches.split(",")]
        if not batches or min(batches) < 1:
            raise ValueError
    except ValueError:
        p.error(f"--batches must be positive integers like 1,16, got {args.batches!r}")
    if args.iters < 1 or args.warmup < 0:
        p.error("--iters must be >= 1 and --warmup >= 0")
    report = run_bench(args.ckpt, args.task, batches, dtype="fp16" if args.fp16 else "fp32", warmup=args.warmup,
                       iters=args.iters, threads=args.threads, out_dir=args.out)
    print()
    print(markdown(report))
    print("wrote " + ", ".join(report["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
