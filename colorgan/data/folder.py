"""A plain image-folder dataset (no LMDB): sorted, recursive, RGB on white, square, [-1, 1]."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


def list_images(root: str | os.PathLike, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[Path]:
    """All image files under `root` (recursive), sorted by their path relative to `root`.

    Raises FileNotFoundError if `root` is missing or not a folder, ValueError if it holds no image.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise FileNotFoundError(f"expected an image folder, got a file: {str(root)!r}")
    exts = tuple(e.lower() for e in extensions)
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts and not p.name.startswith(".")]
    if not files:
        raise ValueError(f"image folder {str(root)!r} holds no image (looked for {', '.join(exts)}, recursively)")
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def images_sha256(root: str | os.PathLike) -> str:
    """One SHA-256 over an image folder's images (relative paths and bytes, in `list_images` order): two folders
    with the same digest hold the same images under the same names, wherever they are."""
    h = hashlib.sha256()
    for p in list_images(root):
        h.update(p.relative_to(root).as_posix().encode("utf-8") + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _wide_grey_to_l(img: Image.Image) -> Image.Image:
    """16-bit ("I;16*") and 32-bit ("I", "F") greyscale as 8-bit "L": Pillow's own conversion clips them to
    white. 16-bit modes scale by 1/257; "I"/"F" by their range (values above 255 are taken as 16-bit)."""
    a = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16") or (img.mode in ("I", "F") and np.nanmax(a, initial=0) > 255):
        a = a / 257.0
    return Image.fromarray(np.clip(np.nan_to_num(a), 0, 255).round().astype(np.uint8), "L")


def to_rgb_on_white(img: Image.Image) -> Image.Image:
    """Convert any PIL image (palette, grey, grey+alpha, 16-bit grey, CMYK, RGB(A), ...) to 8-bit RGB,
    compositing transparency onto white."""
    if img.mode.startswith("I") or img.mode == "F":
        img = _wide_grey_to_l(img)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """Load one image as an HxWx3 uint8 array: RGB, alpha on white, centre-cropped to a square and
    resized with antialiasing (LANCZOS) to `size` x `size` when `size` is given. A file that is not a
    readable image raises ValueError naming it."""
    try:
        with Image.open(path) as im:
            im.load()
            img = to_rgb_on_white(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path} is not a readable image ({exc})") from None
    if size is not None:
        w, h = img.size
        if w != h:
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            img = img.crop((left, top, left + s, top + s))
        if img.size != (size, size):
            img = img.resize((size, size), Image.LANCZOS)
    return np.array(img, dtype=np.uint8)


def check_readable(files: list[Path]) -> None:
    """Open every file's header (fast, no pixel decoding): ValueError naming the unreadable ones."""
    bad = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.size  # noqa: B018 - the header is parsed on open
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            bad.append(f"{f} ({type(exc).__name__}: {exc})")
    if bad:
        raise ValueError(f"{len(bad)} file(s) in the image folder are not readable images; remove or fix them: "
                         f"{'; '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}")


def uint8_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(arr).copy() if not arr.flags.writeable else np.ascontiguousarray(arr)).permute(2, 0, 1).float().div(127.5).sub(1.0)


class ImageFolder(torch.utils.data.Dataset):
    """Every png/jpg/jpeg/webp file under `root` (sorted, recursive) as a 3 x size x size float tensor
    in [-1, 1]; transparency is composited on white, non-square images are centre-cropped.

    `size=None` keeps each image's own size (then all images must share one size to be batched).
    """

    def __init__(self, root: str | os.PathLike, size: int | None = None,
                 extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> None:
        if size is not None and (not isinstance(size, int) or size < 1):
            raise ValueError(f"size must be a positive int or None, got {size!r}")
        self.root = Path(root)
        self.size = size
        self.files: list[Path] = list_images(self.root, extensions)
        check_readable(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        return uint8_to_tensor(load_image(self.files[index], self.size))

    def __repr__(self) -> str:
        return f"ImageFolder(root={str(self.root)!r}, size={self.size}, n={len(self)})"
