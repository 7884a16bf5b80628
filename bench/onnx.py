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
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from bench import common


def time_rows(fn: Callable[[], Any], warmup: int, iters: int, sync: Optional[Callable[[], None]] = None) -> dict:
    """Wall time per call (median, p20, p80 in ms) after `warmup` calls; `sync` ends each timed call."""
    return common.time_cpu(lambda _i: fn(), warmup=warmup, reps=iters, sync=sync).to_dict()


def environment(dev: torch.device, threads: int) -> dict[str, Any]:
    """The common environment record plus the ONNX packages and onnxruntime's providers."""
    import onnx
    import onnxruntime as ort

    return {**common.environment(dev), "threads": threads, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
            "ort_available_providers": ort.get_available_providers()}


def bench_generator(G, tname: Optional[str], batches: Sequence[int] = (1, 16), *,
                    cpu_batches: Optional[Sequence[int]] = None, dtype: str = "fp32", warmup: int = 5,
                    iters: int = 20, threads: Optional[int] = None, fused_skip: Optional[str] = None,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Export task `tname` (None: the base) of the CPU generator G to a temporary file (with its parity check)
    and time every row; onnxruntime's CPU provider only at `cpu_batches` (default: all batches);
    `fused_skip`: a reason to leave the torch-fused rows out."""
    import fastlora
    from export.api import ExportError, export_generator, make_session
    from export.graph import ExportGenerator
    from fastlora.backend import triton_unavailable_reason

    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    cpu_batches = list(batches if cpu_batches is None else cpu_batches)
    rows: list[dict[str, Any]] = []

    def add(name: str, batch: int, timing: Optional[dict] = None, skipped: Optional[str] = None, **extra) -> None:
        row = {"path": name, "batch": batch, **extra}
        if timing:
            row.update(timing, images_per_s=batch / (timing["median_ms"] * 1e-3))
            log(f"  {name:13s} batch {batch:3d}: {row['images_per_s']:10.1f} img/s  "
                f"(median {timing['median_ms']:.2f} ms)")
        else:
            row["skipped"] = skipped
            log(f"  {name:13s} batch {batch:3d}: skipped ({skipped})")
        rows.append(row)

    gen = torch.Generator().manual_seed(0)
    zs = {b: torch.randn(b, G.style_dim, generator=gen) for b in sorted(set(batches) | set(cpu_batches))}
    merged = ExportGenerator(G, tname, dtype=dtype)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / f"{tname or 'base'}.onnx"
        res = export_generator(G, tname, file, dtype=dtype, batches=(1, 2))
        log(res.summary())

        # PyTorch first, so onnxruntime's spinning worker threads cannot slow it down.
        sync = torch.cuda.synchronize if dev.type == "cuda" else None
        G, merged = G.to(dev), merged.to(dev)
        if tname is not None:
            fastlora.set_task(G, tname)
        fused_reason = fused_skip or triton_unavailable_reason(G.input.input)
        if fused_reason is None and dev.type != "cuda":
            fused_reason = "the fused kernels are timed on CUDA only (on the CPU they would run in Triton's interpreter)"
        with torch.inference_mode():
            for b in batches:
                z = zs[b].to(dev)
                add("torch-eager", b, time_rows(lambda: G(z, backend="torch"), warmup, iters, sync), device=dev.type)
                add("torch-merged", b, time_rows(lambda: merged(z), warmup, iters, sync), device=dev.type)
                if fused_reason:
                    add("torch-fused", b, skipped=fused_reason)
                else:
                    add("torch-fused", b, time_rows(lambda: G(z, backend="triton"), warmup, iters, sync),
                        device=dev.type)
        G, merged = G.cpu(), None

        sessions: dict[str, Any] = {"ort-cpu": make_session(file, "cpu", threads=threads)}
        cuda_reason = None
        try:
            sessions["ort-cuda"] = make_session(file, "cuda")
        except ExportError as exc:
            cuda_reason = str(exc).split(" (")[0]
        for name, sizes in (("ort-cpu", cpu_batches), ("ort-cuda", batches)):
            for b in sizes:
                s = sessions.get(name)
                if s is None:
                    add(name, b, skipped=cuda_reason)
                    continue
                feed = {"z": zs[b].numpy()}
                add(name, b, time_rows(lambda s=s, feed=feed: s.run(["image"], feed), warmup, iters),
                    providers=s.get_providers())
        del sessions

    env = environment(dev, threads)
    return {"bench": "onnx", "date": env["date"], "device": common.device_slug(dev), "environment": env, "task": tname or "base", "dtype": dtype,
            "generator": G.config(), "base_params": res.base_params, "onnx_bytes": res.size_bytes,
            "adapter_params": res.adapter_params, "parity": {"max_abs": res.max_abs, "rel": res.rel,
                                                              "providers": res.providers},
            "rows": rows}


def run_bench(ckpt: str, task: str, batches: Sequence[int] = (1, 16), *, dtype: str = "fp32", warmup: int = 5,
              iters: int = 20, threads: Optional[int] = None, out_dir: Optional[Path] = None,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Load `task` of checkpoint `ckpt`, time every row (bench_generator) and write
    <device>-<date>-onnx.json and .md under `out_dir` (default bench/results)."""
    from colorgan.checkpoint import load_checkpoint

    tname = None if task == "base" else task
    G, _, _ = load_checkpoint(ckpt, "cpu", tasks=[] if tname is None else [tname], load_d=False)
    report = bench_generator(G, tname, batches, dtype=dtype, warmup=warmup, iters=iters, threads=threads, log=log)
    report["checkpoint"] = str(ckpt)
    stem = Path(out_dir if out_dir is not None else common.RESULTS_DIR) / f"{report['device']}-{report['date']}-onnx"
    report["files"] = [str(f) for f in common.write_outputs(stem, report, markdown(report))]
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
             f"{env['device']}. Images/s from the median of "
             f"{next((r['reps'] for r in report['rows'] if r.get('reps')), '?')} runs after warm-up.", "",
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench onnx", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="checkpoint folder")
    p.add_argument("--task", required=True, help="task name, or 'base'")
    p.add_argument("--batches", default="1,16", help="comma-separated batch sizes (default 1,16)")
    p.add_argument("--fp16", action="store_true", help="export and time the fp16 file (and fp16 merged torch)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for onnxruntime and torch")
    p.add_argument("--out", default=None, help=f"results folder (default {common.RESULTS_DIR})")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = build_parser()
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
