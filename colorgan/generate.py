"""Batched image generation from a checkpoint folder, one fixed z per seed for every task."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

import fastlora
from colorgan.checkpoint import load_checkpoint, read_checkpoint_config
from colorgan.generator import NOISE_MODES, Generator
from colorgan.outputs import check_replaceable_file, save_png
from colorgan.seeds import render_request, seed_noise, seeds_to_z

BASE = "base"


def resolve_tasks(spec: Union[str, Sequence[str]], available: Sequence[str]) -> list[str]:
    """"a,b" | "all" | "base" (and mixes such as "base,all") → task names in order, "base" for the base."""
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    if not items or any(not s for s in items):
        raise ValueError(f"tasks must be NAME[,NAME...], 'all' or 'base', got {spec!r}")
    out: list[str] = []
    for s in items:
        names = list(available) if s == "all" else [s]
        if s == "all" and not names:
            raise ValueError("'all': the checkpoint has no tasks (use 'base' for the base model)")
        for n in names:
            if n != BASE and n not in available:
                raise KeyError(f"unknown task {n!r}; the checkpoint has tasks {list(available)} "
                               f"(or use 'base' / 'all')")
            if n not in out:
                out.append(n)
    return out


def apply_strengths(G: Generator, strengths: Optional[Mapping[str, float]], tasks: Sequence[str],
                    available: Sequence[str]) -> dict[str, float]:
    """Put each task of `tasks` (the ones loaded into G) that `strengths` names at that strength instead of its
    saved one (`fastlora.set_strength`: 0 the base, 1 the task as trained; the checkpoint on disk is not changed).
    Names among the checkpoint's tasks `available` but not in `tasks` are skipped; any other name is a KeyError.
    Returns {task: strength} as set."""
    unknown = [t for t in (strengths or {}) if t not in available]
    if unknown:
        raise KeyError(f"strength for unknown task {unknown[0]!r}; the checkpoint has tasks {list(available)}")
    applied = {}
    for task, s in (strengths or {}).items():
        if task in tasks:
            try:
                fastlora.set_strength(G, task, s)
            except ValueError as exc:
                raise ValueError(f"strength of task {task!r}: {exc}") from None
            applied[task] = s
    return applied


def to_uint8(images: Tensor) -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] → uint8 [N, H, W, 3]."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def seed_file(outdir: Path, task: str, seed: int) -> Path:
    return outdir / task / f"seed{seed:04d}.png"


def check_outputs(files: Sequence[Path], overwrite: bool) -> None:
    """Every image file may be written: outside the package, and an existing one only with `overwrite` and only
    when colorgan wrote it (colorgan.outputs.check_replaceable_file); refused before anything is written."""
    existing = [p for p in files if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{len(existing)} output file(s) already exist, e.g. {existing[0]}; pass overwrite=True "
                              f"(CLI: --overwrite) to replace them or choose another output folder")
    for p in files:
        check_replaceable_file(p, overwrite)


def _device(device: str) -> torch.device:
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} was requested but no CUDA device is available (torch "
                           f"{torch.__version__}); use device cpu")
    return torch.device(device)


def activate(G: Generator, task: Optional[str]) -> None:
    """Make `task` (None = the base) the generator's active task."""
    if task is None and not any(True for _ in fastlora.adapted_layers(G)):
        return
    fastlora.set_task(G, task)


def _batch_noise(G: Generator, seeds: Sequence[int], device: torch.device) -> list[Tensor]:
    shapes = [(1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2)) for i in range(G.num_layers)]
    per_seed = [seed_noise(s, shapes) for s in seeds]
    return [torch.stack([p[i] for p in per_seed]).to(device, G.input.input.dtype) for i in range(G.num_layers)]


def render(G: Generator, task: Optional[str], seeds: Sequence[int], *, truncation: float = 1.0,
           center: Optional[Tensor] = None, noise_mode: str = "const", backend: str = "auto") -> Tensor:
    """Images of `seeds` under `task` (None = base) as one batch [N, 3, S, S]."""
    activate(G, task)
    dev = G.device
    z = seeds_to_z(seeds, G.style_dim, device=dev, dtype=G.input.input.dtype)
    noise = _batch_noise(G, seeds, dev) if noise_mode == "random" else None
    mode = "const" if noise_mode == "random" else noise_mode
    return G(z, truncation=truncation, truncation_latent=center, noise_mode=mode, noise=noise, backend=backend)


def graph_renderer(G: Generator, task: Optional[str], batch: int, *, truncation: float = 1.0,
                   center: Optional[Tensor] = None, noise_mode: str = "const", backend: str = "auto"):
    """`render` for one task as a CUDA graph captured at a fixed batch (`fastlora.capture`): returns
    f(seeds) → images [len(seeds), 3, S, S]; shorter seed lists are padded to the batch (the extra images are
    dropped). RuntimeError without a CUDA device. Capture again after switching tasks."""
    activate(G, task)
    dev, dt = G.device, G.input.input.dtype
    if truncation != 1 and center is None:  # read w_avg now: the captured forward must not check it (a sync)
        G._require_w_avg()
        center = G.w_avg
    mode = "const" if noise_mode == "random" else noise_mode
    shapes = [(batch, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2)) for i in range(G.num_layers)]
    z0 = torch.zeros(batch, G.style_dim, device=dev, dtype=dt)
    n0 = [torch.zeros(s, device=dev, dtype=dt) for s in shapes] if noise_mode == "random" else []

    def forward(z: Tensor, *noise: Tensor) -> Tensor:
        return G(z, truncation=truncation, truncation_latent=center, noise_mode=mode, noise=list(noise) or None,
                 backend=backend)

    graph = fastlora.capture(forward, z0, *n0)

    def run(seeds: Sequence[int]) -> Tensor:
        padded = list(seeds) + [seeds[-1]] * (batch - len(seeds))
        z = seeds_to_z(padded, G.style_dim, device=dev, dtype=dt)
        noise = _batch_noise(G, padded, dev) if noise_mode == "random" else []
        return graph(z, *noise)[:len(seeds)].clone()

    return run


def generate(ckpt: Union[str, os.PathLike], tasks: Union[str, Sequence[str]], seeds: Union[str, Sequence[int]],
             outdir: Union[str, os.PathLike], *, truncation: float = 1.0, batch: int = 32, grid: bool = False,
             device: str = "cpu", noise_mode: str = "const", backend: str = "auto", overwrite: bool = False,
             progress: bool = True, cuda_graph: bool = False,
             strengths: Optional[Mapping[str, float]] = None) -> dict[str, Any]:
    """Write `<outdir>/<task>/seedNNNN.png` for every task and seed (and `<outdir>/grid.png`,
    a row per task and a column per seed, with grid=True). Returns the written paths.
    `cuda_graph`: capture each task's forward once as a CUDA graph at the batch size and replay it.
    `strengths`: {task: s} renders those tasks at strength s instead of their saved one (`apply_strengths`)."""
    from tqdm import tqdm

    seed_list = render_request(seeds, batch, truncation)
    if noise_mode not in NOISE_MODES:
        raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
    dev = _device(device)
    if cuda_graph and dev.type != "cuda":
        raise ValueError(f"cuda_graph needs device cuda (got device {device})")
    cfg = read_checkpoint_config(ckpt)
    available = [e["name"] for e in cfg["tasks"]]
    task_list = resolve_tasks(tasks, available)
    outdir = Path(outdir)
    files = [seed_file(outdir, t, s) for t in task_list for s in seed_list]
    grid_path = outdir / "grid.png"
    check_outputs(files + ([grid_path] if grid else []), overwrite)
    G, _, _ = load_checkpoint(ckpt, dev, tasks=[t for t in task_list if t != BASE], load_d=False)
    applied = apply_strengths(G, strengths, task_list, available)
    rows: list[np.ndarray] = []
    chunks = [seed_list[i:i + batch] for i in range(0, len(seed_list), batch)]
    written: list[str] = []
    with torch.inference_mode(), tqdm(total=len(task_list) * len(chunks), desc="generate", unit="batch",
                                      disable=not progress) as bar:
        for t in task_list:
            task = None if t == BASE else t
            activate(G, task)
            center = (G.task_w_avg() if task is not None else None) if truncation != 1 else None
            (outdir / t).mkdir(parents=True, exist_ok=True)
            row = []
            replay = (graph_renderer(G, task, len(chunks[0]), truncation=truncation, center=center,
                                     noise_mode=noise_mode, backend=backend) if cuda_graph else None)
            for chunk in chunks:
                imgs = to_uint8(replay(chunk) if replay else render(G, task, chunk, truncation=truncation,
                                                                     center=center, noise_mode=noise_mode,
                                                                     backend=backend))
                for s, arr in zip(chunk, imgs):
                    written.append(str(save_png(seed_file(outdir, t, s), arr)))
                if grid:
                    row.append(imgs)
                bar.update(1)
            if grid:
                rows.append(np.concatenate(row))
    result: dict[str, Any] = {"files": written, "tasks": task_list, "seeds": seed_list, "strengths": applied}
    if grid:
        n, h, w, c = rows[0].shape
        canvas = np.stack(rows).transpose(0, 2, 1, 3, 4).reshape(len(rows) * h, n * w, c)
        result["grid"] = str(save_png(grid_path, np.ascontiguousarray(canvas)))
    return result
