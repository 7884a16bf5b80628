"""`colorgan demo`: the whole pipeline end to end in about ten minutes on a CPU.

By default the demo adapts the emoji base shipped in the package (`emoji32`) to the three
shipped 10-shot emoji tasks one after another, renders a grid with a row for the base and
each task on the same seeds, exports a task to ONNX with the parity check, and prints what
each task stores against the full generator, its training time and (with the Inception
file and the tasks' full sets) its KID/FID against the unadapted base's. `procedural=True`
instead draws tiny procedural data and pretrains a tiny base first (a two-minute smoke run).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, ImageDraw

from colorgan.checkpoint import load_checkpoint, parameter_report, read_checkpoint_config, resolve_checkpoint
from colorgan.evaluate import fid_kid, real_folders
from colorgan.generate import generate
from colorgan.outputs import prepare_output_folder
from colorgan.train.continual import TrainConfig, train
from colorgan.train.loop import RunOptions
from colorgan.train.pretrain import PretrainConfig, pretrain
from export import export_task
from fastlora.io import atomic_write_json

DEMO_TASKS_DIR = Path(__file__).parent / "assets" / "demo_tasks"
SHIPPED_BASE = "emoji32"
TASK_ITER_CPU = 1000  # three tasks in 6-14 minutes on 2 CPU cores (0.16-0.3 s per iteration measured)
TASK_ITER_GPU = 3000  # the published per-task budget
PROCEDURAL_TASK_ITER = 400
DEMO_R1 = 0.1  # R1 weight at 32 px (benchmarks.md, validation round 6); `colorgan train` keeps 10 (256 px)
DEMO_CONV_MAX_RES = 16  # conv adapters up to 16 px at 32 px (benchmarks.md, validation round 9); `colorgan train`: all
SIZE = 16
CHANNELS = {4: 32, 8: 32, 16: 16}
STYLE_DIM = 32


def demo_task_dirs() -> dict[str, Path]:
    """The shipped 10-shot training folders of the emoji demo tasks (licences in demo_tasks/LICENSES.md)."""
    return {p.name: p for p in sorted(DEMO_TASKS_DIR.iterdir()) if p.is_dir()}


def default_task_iter(device: str) -> int:
    """Iterations per demo task: a ten-minute budget on a CPU, more on a GPU."""
    return TASK_ITER_GPU if str(device).startswith("cuda") else TASK_ITER_CPU


def default_real() -> Union[str, None]:
    """The demo tasks' full sets: $COLORGAN_EMOJI_DATA, else ./data/emoji32 when it holds them (the
    README's `colorgan data emoji --size 32 --out data/emoji32`), else None."""
    env = os.environ.get("COLORGAN_EMOJI_DATA")
    if env:
        return env
    local = Path("data/emoji32")
    return str(local) if all((local / t / "full").is_dir() for t in demo_task_dirs()) else None


def demo_train_config(base: Union[str, Path], tasks: dict[str, Path], task_iter: int, seed: int = 0,
                      **overrides: Any):
    """The demo's `colorgan train` configuration (`bench quality` uses it too, so their runs are the same): the
    defaults at batch 4, with the 32 px R1 weight (γ 0.1, the shipped base's) and conv adapters up to 16 px, both
    chosen on the validation tasks."""
    settings = dict(iter=task_iter, batch=4, n_sample=8, sample_every=task_iter, save_every=task_iter, log_every=50,
                    n_anchors=10, seed=seed, r1=DEMO_R1, conv_max_res=DEMO_CONV_MAX_RES)
    settings.update(overrides)
    return TrainConfig(ckpt=str(base), tasks=[f"{n}={d}" for n, d in tasks.items()], **settings)


def _shape_image(rng: np.random.Generator, kind: str, size: int = 32) -> Image.Image:
    """One procedural image: a coloured shape on white (drawn at `size`, stored as is)."""
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    r = int(rng.integers(size // 4, size // 2 - 1))
    cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
    if kind == "source":
        kind = ("circle", "square", "triangle")[int(rng.integers(3))]
    color = tuple(int(v) for v in rng.integers(0, 200, 3))
    if kind in ("circle", "red-circle"):
        if kind == "red-circle":
            color = (int(rng.integers(180, 256)), int(rng.integers(0, 60)), int(rng.integers(0, 60)))
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif kind == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif kind in ("triangle", "outline-triangle"):
        pts = [(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)]
        if kind == "outline-triangle":
            d.polygon(pts, outline=(0, 0, 0), width=3)
        else:
            d.polygon(pts, fill=color)
    return img


def make_data(root: Path, seed: int = 0, n_source: int = 96, shots: int = 10) -> dict[str, Path]:
    """Write the demo's image folders: source/, and <task>/train with `shots` images per task."""
    rng = np.random.default_rng(seed)
    folders = {"source": root / "source", "red-circles": root / "red-circles" / "train",
               "outline-triangles": root / "outline-triangles" / "train"}
    kinds = {"source": "source", "red-circles": "red-circle", "outline-triangles": "outline-triangle"}
    for name, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_source if name == "source" else shots):
            _shape_image(rng, kinds[name]).save(folder / f"{i:04d}.png")
    return folders


def demo_entries() -> list[str]:
    """What the demo writes in its folder (--overwrite replaces a demo folder holding nothing else)."""
    exported = [f"{t}.onnx" for t in [*demo_task_dirs(), "red-circles"]]
    return ["data", "base", "run", "samples", "summary.json", *exported]


def run_demo(out: Union[str, Path], *, base: Union[str, Path, None] = SHIPPED_BASE,
             real: Union[str, Path, None] = None, inception: Union[str, Path, None] = None, n_eval: int = 500,
             pretrain_iter: int = 2000, task_iter: Union[int, None] = None, seed: int = 0, overwrite: bool = False,
             progress: bool = True) -> dict[str, Any]:
    """Run the demo into folder `out`; returns (and writes `out/summary.json`) the summary.

    `base`: a checkpoint folder or the name of a shipped base (default "emoji32"), adapted to the
    shipped emoji demo tasks; None: procedural data and a tiny base pretrained here. task_iter:
    iterations per task (default `default_task_iter`). With `inception` and `real` (a data root of
    `colorgan data emoji`): KID/FID of every task and of the unadapted base against each task's full set.
    """
    out = Path(out)
    if base is not None:
        read_checkpoint_config(base)  # a clear error before anything is written
    if task_iter is None:
        task_iter = PROCEDURAL_TASK_ITER if base is None else \
            default_task_iter("cuda" if torch.cuda.is_available() else "cpu")
    prepare_output_folder(out, "demo", demo_entries(), overwrite=overwrite,
                          inputs=[resolve_checkpoint(base) if base is not None else None, real, inception])
    opts = RunOptions(progress=progress, inception=str(inception) if inception else None)
    threads = torch.get_num_threads()
    if base is None:
        torch.set_num_threads(1)  # the tiny procedural model: threads cost more than they give
    try:
        t0 = time.perf_counter()
        if base is None:
            data = make_data(out / "data", seed)
            print(f"[1/5] data: {out / 'data'} (source: 96 images; tasks: 10 shots each)")
            pretrain(PretrainConfig(data=str(data["source"]), size=SIZE, iter=pretrain_iter, batch=8,
                                    style_dim=STYLE_DIM, n_mlp=2, channels=dict(CHANNELS), n_sample=8,
                                    sample_every=max(pretrain_iter // 2, 1), save_every=pretrain_iter, log_every=25,
                                    seed=seed),
                     out / "base", options=opts)
            base = out / "base" / "checkpoint"
            tasks = [("red-circles", data["red-circles"]), ("outline-triangles", data["outline-triangles"])]
            print(f"[2/5] pretrained a {SIZE}px base in {time.perf_counter() - t0:.0f} s: {base}")
        else:
            tasks = list(demo_task_dirs().items())
            print(f"[1/5] base: {base}; tasks: {', '.join(t for t, _ in tasks)} (10 shipped shots each), "
                  f"{task_iter} iterations each")
            print("[2/5] no pretraining: the base is given")
        t1 = time.perf_counter()
        summary_train = train(demo_train_config(base, dict(tasks), task_iter, seed), out / "run", options=opts)
        print(f"[3/5] adapted {len(tasks)} tasks one after another in {time.perf_counter() - t1:.0f} s: "
              f"{out / 'run' / 'checkpoint'}")
        ckpt = out / "run" / "checkpoint"
        gen = generate(ckpt, "base,all", "0-7", out / "samples", grid=True, progress=False)
        print(f"[4/5] grid (a row for the base and each task, same seeds): {gen['grid']}")
        G, _, _ = load_checkpoint(ckpt, "cpu")
        report = parameter_report(G)
        export = _export(ckpt, tasks[0][0], out)
        print(f"[5/5] ONNX export of task {export['task']!r} (adapters merged into the base): {export['path']}, "
                  f"{export['size_bytes'] / 1e6:.2f} MB; onnxruntime vs PyTorch: max abs error {export['max_abs']:.1e}, "
                  f"relative {export['rel']:.1e}, providers {export['providers']}")
        scores = _scores(ckpt, [t for t, _ in tasks], real, inception, n_eval, progress) if inception and real else None
    finally:
        torch.set_num_threads(threads)
    summary = {"base": str(base), "task_iter": task_iter, "base_generator_params": report["generator"],
               "tasks": {t: {"stored_params": report["tasks"][t]["stored"],
                             "fraction_of_generator": report["tasks"][t]["stored"] / report["generator"],
                             "train_seconds": summary_train.get("seconds", {}).get(t),
                             **(scores or {}).get(t, {})} for t, _ in tasks},
               "pretrain_seconds": t1 - t0, "grid": gen["grid"], "export": export}
    atomic_write_json(out / "summary.json", summary)
    _print_summary(summary, report["generator"], out)
    return summary


def _scores(ckpt: Path, tasks: list[str], real: Union[str, Path], inception: Union[str, Path], n: int,
            progress: bool) -> dict[str, dict]:
    """KID/FID of each task and of the unadapted base against the task's full set."""
    out = {}
    for t in tasks:
        full, _ = real_folders(real, t, None)
        kw = dict(inception=inception, progress=progress)
        task, base = fid_kid(ckpt, t, real, n, **kw), fid_kid(ckpt, "base", full, n, **kw)
        out[t] = {"fid": task["fid"], "kid": task["kid"], "base_fid": base["fid"], "base_kid": base["kid"]}
    return out


def _print_summary(summary: dict, generator_params: int, out: Path) -> None:
    print("\nsummary")
    print(f"  full generator: {generator_params:,} parameters")
    for t, info in summary["tasks"].items():
        secs = info["train_seconds"]
        line = (f"  task {t:<18} stores {info['stored_params']:>7,} parameters "
                f"({100 * info['fraction_of_generator']:.2f}% of the generator)"
                + (f", trained in {secs:.0f} s" if isinstance(secs, (int, float)) else ""))
        if "kid" in info:
            line += (f"; KID×1e3 {1e3 * info['kid']:.1f} (base {1e3 * info['base_kid']:.1f}), "
                     f"FID {info['fid']:.1f} (base {info['base_fid']:.1f})")
        print(line)
    print(f"  everything is in {out}")


def _export(ckpt: Path, task: str, out: Path) -> Any:
    """Export one task to ONNX (with the exporter's parity check)."""
    result = export_task(ckpt, task, out / f"{task}.onnx")
    return json.loads(json.dumps(result, default=str))
