"""What colorgan may write, replace and remove.

Folders a command creates as a whole (run folders, checkpoint folders, the demo's folder, an emoji
data set) carry a marker file, `MARKER`, naming their kind. `--overwrite` removes or replaces such a
folder only when all of these hold, and otherwise refuses with one line naming what it found:

- it lies outside the installed package (shipped bases and code are never written);
- it is not, and does not hold, an input of the same command;
- it carries colorgan's marker of the expected kind;
- it holds nothing but the entries colorgan writes there (a user's notes stop it).

Single files are replaced only when colorgan wrote them: PNG images carry a `Software: colorgan` text
chunk, ONNX files colorgan's metadata, JSON results a `colorgan` key.
"""
from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np
from PIL import Image, PngImagePlugin

from colorgan.version import __version__
from fastlora.io import LEFTOVER, atomic_write_bytes, atomic_write_json

MARKER = ".colorgan-output"
PNG_SOFTWARE = "colorgan"
PACKAGES = ("colorgan", "fastlora", "kernels", "export")
PathLike = Union[str, os.PathLike]


def package_dirs() -> list[Path]:
    """The folders of colorgan's installed packages (never written)."""
    out = []
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        for loc in (spec.submodule_search_locations or []) if spec is not None else []:
            out.append(Path(loc).resolve())
    return out


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def check_writable(path: PathLike, what: str = "output") -> None:
    """Refuse (PermissionError) an output inside the installed package: shipped bases and code stay as shipped."""
    p = Path(path).resolve()
    for d in package_dirs():
        if _inside(p, d):
            raise PermissionError(f"refusing to write the {what} {path}: it lies inside the installed package ({d}), "
                                  f"whose files (shipped bases, code) are read-only; choose a folder of your own")


def check_not_input(path: PathLike, inputs: Iterable[Optional[PathLike]]) -> None:
    """Refuse (ValueError) to remove `path` when it is, or holds, one of the command's inputs."""
    p = Path(path).resolve()
    for inp in inputs:
        if inp is None:
            continue
        q = Path(inp).resolve()
        if _inside(q, p):
            raise ValueError(f"refusing to replace {path}: it {'is' if q == p else 'holds'} this command's input "
                             f"{inp}; choose another output folder")


def write_marker(folder: PathLike, kind: str) -> None:
    """Mark `folder` as a colorgan output of `kind` (run, checkpoint, demo, data)."""
    atomic_write_json(Path(folder) / MARKER, {"colorgan": __version__, "kind": kind})


def read_marker(folder: PathLike) -> Optional[str]:
    """The kind recorded in `folder`'s marker, or None when it has no readable marker."""
    try:
        obj = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return obj.get("kind") if isinstance(obj, dict) and isinstance(obj.get("kind"), str) else None


def check_replaceable(folder: PathLike, kind: str, known: Iterable[str], inputs: Iterable[Optional[PathLike]] = ()) -> None:
    """Raise unless colorgan may remove `folder` to replace it with a new output of `kind` (see the module doc).

    known: the entry names colorgan writes in such a folder (besides the marker and leftovers of
    interrupted writes)."""
    folder = Path(folder)
    check_writable(folder)
    check_not_input(folder, inputs)
    if not folder.is_dir():
        raise FileExistsError(f"refusing to replace {folder}: it is a file, not a colorgan {kind} folder")
    if not any(folder.iterdir()):
        return  # an empty folder: nothing to lose
    found = read_marker(folder)
    if found is None:
        raise FileExistsError(f"refusing to replace {folder}: it is not a colorgan {kind} folder (no {MARKER} "
                              f"marker: colorgan did not write it); delete it yourself or choose another output")
    if found != kind:
        raise FileExistsError(f"refusing to replace {folder}: it is a colorgan {found} folder, not a {kind} folder; "
                              f"choose another output")
    allowed = set(known) | {MARKER}
    foreign = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()
                     if p.name not in allowed and not LEFTOVER.match(p.name))
    if foreign:
        raise FileExistsError(f"refusing to replace {folder}: it holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} "
                              f"colorgan did not write ({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); "
                              f"move them away first")


def clear_output(folder: PathLike, kind: str, known: Iterable[str], inputs: Iterable[Optional[PathLike]] = ()) -> None:
    """Remove an earlier output folder after `check_replaceable` accepts it."""
    check_replaceable(folder, kind, known, inputs)
    shutil.rmtree(folder)


def prepare_output_folder(folder: PathLike, kind: str, known: Iterable[str], *, overwrite: bool,
                          inputs: Iterable[Optional[PathLike]] = (), what: str = "output folder") -> Path:
    """Make `folder` ready for a new output of `kind`: created (and marked) when missing or empty; an
    earlier output replaced only with `overwrite` (and only when `check_replaceable` accepts it)."""
    folder = Path(folder)
    check_writable(folder, what)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        if not overwrite:
            raise FileExistsError(f"{what} {folder} already exists and is not empty; pass overwrite=True (CLI: --overwrite) "
                                  f"to replace an earlier colorgan output there, or choose another")
        clear_output(folder, kind, known, inputs)
    folder.mkdir(parents=True, exist_ok=True)
    write_marker(folder, kind)
    return folder


# ----------------------------------------------------------------------------- single files

def png_bytes(arr: np.ndarray) -> bytes:
    """A uint8 HxWx3 array as PNG bytes, tagged `Software: colorgan`."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", PNG_SOFTWARE)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _is_own_png(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            return im.format == "PNG" and im.info.get("Software") == PNG_SOFTWARE
    except (OSError, ValueError):
        return False


def _is_own_onnx(path: Path) -> bool:
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - anything unreadable is not ours
        return False
    return any(p.key.startswith("colorgan.") for p in model.metadata_props)


def _is_own_json(path: Path) -> bool:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(obj, dict) and "colorgan" in obj


OWNERSHIP = {".png": _is_own_png, ".onnx": _is_own_onnx, ".json": _is_own_json}


def check_replaceable_file(path: PathLike, overwrite: bool) -> None:
    """Raise unless a file may be written at `path`: outside the package, and when it exists, only with
    `overwrite` and only if colorgan wrote it (a PNG, ONNX or JSON result of its own)."""
    path = Path(path)
    check_writable(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() or path.is_symlink():
        raise FileExistsError(f"refusing to write {path}: a {'folder' if path.is_dir() else 'link'} is there")
    if not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (CLI: --overwrite) to replace it or choose another "
                              f"output")
    own = OWNERSHIP.get(path.suffix.lower())
    if own is None or not own(path):
        raise FileExistsError(f"refusing to replace {path}: colorgan did not write it (no colorgan tag in the file); "
                              f"move it away or choose another output")


def save_png(path: PathLike, arr: np.ndarray) -> Path:
    """Write a uint8 HxWx3 image as a tagged PNG, atomically."""
    path = Path(path)
    atomic_write_bytes(path, png_bytes(arr))
    return path
