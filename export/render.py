"""Render seeds with an exported ONNX generator: onnxruntime only, no PyTorch model.

Seeds map to the same z as `colorgan generate` (colorgan.seeds), so a file exported with
`--input z` and const noise renders the images `colorgan generate --noise const` gives for
that task (up to the file's dtype); a file with noise inputs renders per-seed noise
(`--noise random` in `colorgan generate`) or no noise.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

import fastlora

from colorgan.generate import check_outputs, seed_file
from colorgan.outputs import save_png
from colorgan.seeds import render_request, seed_noise, seeds_to_z
from export.api import make_session

PathLike = Union[str, os.PathLike]
INPUT_NOISE = ("random", "zero")


def read_metadata(session) -> dict[str, str]:
    """The colorgan.* metadata an exported file carries (empty for foreign files)."""
    return dict(session.get_modelmeta().custom_metadata_map)


def _describe(session) -> dict[str, Any]:
    inputs = {i.name: i for i in session.get_inputs()}
    kinds = [k for k in ("z", "w", "wplus") if k in inputs]
    if len(kinds) != 1 or "image" not in [o.name for o in session.get_outputs()]:
        raise ValueError(f"this ONNX file is not a colorgan export: inputs {list(inputs)}, outputs "
                         f"{[o.name for o in session.get_outputs()]} (expected one of z/w/wplus and 'image')")
    kind = kinds[0]
    dim = inputs[kind].shape[-1]
    noise = sorted((n for n in inputs if n.startswith("noise_")), key=lambda n: int(n.split("_")[1]))
    noise_shapes = [tuple(int(d) for d in inputs[n].shape[1:]) for n in noise]
    return {"input": kind, "style_dim": int(dim), "psi": "psi" in inputs, "noise": noise,
            "noise_shapes": noise_shapes, "order": [i.name for i in session.get_inputs()]}


def images_to_uint8(images: np.ndarray) -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] → uint8 [N, H, W, 3] (the rounding of colorgan.generate.to_uint8)."""
    x = np.round((np.clip(images.astype(np.float32), -1, 1) + 1) * np.float32(127.5)).astype(np.uint8)
    return x.transpose(0, 2, 3, 1)


def run_seeds(session, seeds: Sequence[int], *, trunc: float = 1.0, noise: str = "random") -> np.ndarray:
    """Images [N, 3, S, S] (float32) of `seeds` from one session, as one batch."""
    info = _describe(session)
    if info["input"] != "z":
        raise ValueError(f"this file takes {info['input']!r} latents, so seeds cannot be rendered; export it with "
                         f"--input z")
    if noise not in INPUT_NOISE:
        raise ValueError(f"noise must be one of {INPUT_NOISE}, got {noise!r}")
    feed: dict[str, np.ndarray] = {"z": seeds_to_z(list(seeds), info["style_dim"]).numpy()}
    if info["psi"]:
        feed["psi"] = np.array([trunc], dtype=np.float32)
    elif trunc != 1.0:
        raise ValueError(f"truncation {trunc} was asked for but this file has no 'psi' input; export it with psi=True (CLI: --psi)")
    if info["noise"]:
        if noise == "random":
            per_seed = [seed_noise(s, info["noise_shapes"]) for s in seeds]
            for i, name in enumerate(info["noise"]):
                feed[name] = np.stack([p[i].numpy() for p in per_seed])
        else:
            for name, shape in zip(info["noise"], info["noise_shapes"]):
                feed[name] = np.zeros((1, *shape), dtype=np.float32)
    return session.run(["image"], feed)[0]


def render_onnx(file: PathLike, seeds: Union[str, Sequence[int]], outdir: PathLike, *, grid: bool = False,
                batch: int = 16, trunc: float = 1.0, noise: str = "random", device: str = "cpu",
                overwrite: bool = False) -> dict[str, Any]:
    """Write `<outdir>/<task>/seedNNNN.png` per seed (and `<outdir>/grid.png`, one row, with grid=True)
    from an exported file. Returns the written paths and the providers that ran."""
    seed_list = render_request(seeds, batch, trunc)
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"no ONNX file at {file}")
    session = make_session(file, device)
    meta = read_metadata(session)
    task = meta.get("colorgan.task") or file.stem
    try:
        fastlora.check_task_name(task)  # metadata is untrusted: the task becomes a folder name under outdir
    except ValueError as exc:
        raise ValueError(f"{file}: its task name (metadata colorgan.task or the file name) is not usable as a "
                         f"folder: {exc}") from None
    outdir = Path(outdir)
    paths = [seed_file(outdir, task, s) for s in seed_list]
    grid_path = outdir / "grid.png"
    check_outputs(paths + ([grid_path] if grid else []), overwrite)
    row: list[np.ndarray] = []
    for i in range(0, len(seed_list), batch):
        chunk = seed_list[i:i + batch]
        imgs = images_to_uint8(run_seeds(session, chunk, trunc=trunc, noise=noise))
        for s, arr in zip(chunk, imgs):
            save_png(seed_file(outdir, task, s), arr)
        row.append(imgs)
    result: dict[str, Any] = {"files": [str(p) for p in paths], "task": task, "seeds": seed_list,
                              "providers": session.get_providers()}
    if grid:
        strip = np.concatenate(row)
        n, h, w, c = strip.shape
        result["grid"] = str(save_png(grid_path, np.ascontiguousarray(strip.transpose(1, 0, 2, 3).reshape(h, n * w, c))))
    return result


def open_session(file: PathLike, device: str = "cpu", threads: Optional[int] = None):
    """An onnxruntime session for an exported file (see export.api.make_session)."""
    return make_session(file, device, threads=threads)
