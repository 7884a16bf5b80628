"""Atomic file writes and checked reads (safetensors, JSON).

Every write goes to a temporary file (or folder) in the destination folder and is
renamed into place, so an interrupted save never leaves a half-written file behind.
Temporary names are `.<name>.<8 random chars>.tmp` (and `.old` for a folder being
replaced); `clean_interrupted` removes what a killed process left, and
`find_interrupted` finds a folder caught between the two renames of a replace.
Written files and folders get the permissions the user's umask gives.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import torch

# what tempfile.mkstemp/mkdtemp make of prefix ".<name>." and suffix ".tmp"/".old"
LEFTOVER = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.(?P<what>tmp|old)$")


def umask_mode(folder: bool = False) -> int:
    """The mode a plain open()/mkdir() would give under the current umask (0o666/0o777 minus it)."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if folder else 0o666) & ~mask


def _tmp_path(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, umask_mode())
    return Path(tmp)


def _check_writable_parent(path: Path) -> None:
    parent = path.parent
    if not parent.exists():
        parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"cannot write {path}: folder {parent} is not writable")


def atomic_write_bytes(path: os.PathLike, data: bytes) -> None:
    path = Path(path)
    _check_writable_parent(path)
    _clean_siblings(path)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: os.PathLike, obj: Any) -> None:
    """Write `obj` as strict JSON (non-finite floats become null), atomically."""
    atomic_write_bytes(path, (json.dumps(json_safe(obj), indent=2, sort_keys=True, allow_nan=False) + "\n").encode())


def atomic_save_safetensors(tensors: Mapping[str, torch.Tensor], path: os.PathLike,
                            metadata: Optional[Mapping[str, str]] = None) -> None:
    from safetensors.torch import save

    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, save(clean, metadata=dict(metadata) if metadata else None))


def sha256_file(path: os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_json(path: os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected a JSON file at {path}, found nothing")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON (corrupt or truncated?): {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def load_safetensors(path: os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected a safetensors file at {path}, found nothing")
    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers/data
        raise ValueError(f"{path} is not a readable safetensors file (corrupt or truncated?): {exc}") from None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def load_torch_file(path: os.PathLike, trust_pickle: bool = False, *,
                    trust_hint: str = "rerun with --trust-pickle (trust_pickle=True)") -> Any:
    """torch.load on the CPU with weights_only=True; full unpickling only with trust_pickle (warned).
    trust_hint: what the refusal message tells the user to do if they trust the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected a .pt checkpoint at {path}, found {'a folder' if path.exists() else 'nothing'}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = next((ln.strip() for ln in str(exc).splitlines() if "WeightsUnpickler error" in ln), "")
        if not trust_pickle:
            raise ValueError(
                f"{path} cannot be read with torch.load(weights_only=True){': ' + reason if reason else ''}. It holds "
                f"pickled Python objects (for example the training arguments), and unpickling can execute arbitrary "
                f"code. Only if you trust where this file came from, {trust_hint}.") from None
    except Exception as exc:  # corrupt zip, truncated file, ...
        raise ValueError(f"{path} is not a readable torch checkpoint: {exc}") from None
    warnings.warn(f"loading {path} with torch.load(weights_only=False): this unpickles arbitrary Python objects and "
                  f"can execute code; do this only for files from a trusted source", stacklevel=2)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable torch checkpoint: {exc}") from None


@contextlib.contextmanager
def atomic_directory(path: os.PathLike, overwrite: bool = False,
                     check_replace: Optional[Callable[[Path], None]] = None) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `path` in one step.

    An existing `path` is refused unless `overwrite` is set, and then `check_replace(path)`
    (when given) must accept it (it raises to refuse, e.g. for a folder holding files the
    caller did not write). The replace swaps the two folders atomically where the OS can
    (Linux renameat2); elsewhere it takes two renames, and `find_interrupted` finds the old
    folder if a kill falls between them. On failure nothing at `path` changes and the
    temporary folder is removed.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if path.exists() and check_replace is not None:
        check_replace(path)
    _check_writable_parent(path)
    _clean_siblings(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, umask_mode(folder=True))
    try:
        yield tmp
        if path.is_dir() and _exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)  # now holds the previous folder
        elif path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def find_interrupted(path: os.PathLike) -> Optional[Path]:
    """Where a folder replaced by `atomic_directory` lies when a kill fell between its two renames
    (`path` missing, the previous folder parked in `.<name>.*.old/x`); None otherwise."""
    path = Path(path)
    if path.exists() or not path.parent.is_dir():
        return None
    for cand in sorted(path.parent.glob(f".{glob.escape(path.name)}.*.old")):
        m = LEFTOVER.match(cand.name)
        if m and m.group("name") == path.name and (cand / "x").is_dir():
            return cand / "x"
    return None


def _clean_siblings(path: Path) -> None:
    """Remove what an interrupted earlier write of `path` left beside it (`.<name>.*.tmp`; a parked `.old`
    folder goes back to `path` when `path` is missing)."""
    for cand in sorted(path.parent.glob(f".{glob.escape(path.name)}.*")):
        m = LEFTOVER.match(cand.name)
        if not m or m.group("name") != path.name:
            continue
        _drop_leftover(cand, path, m.group("what"))


def _drop_leftover(p: Path, target: Path, what: str) -> None:
    """Remove one leftover; a parked `.old` folder is first moved back to `target` if `target` is missing."""
    if what == "old" and (p / "x").is_dir() and not target.exists():
        os.replace(p / "x", target)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def clean_interrupted(root: os.PathLike) -> list[str]:
    """Remove what interrupted atomic writes left under `root` (recursively): temporary files and
    folders named `.<name>.<8 chars>.tmp`, and `.old` folders, after moving a parked folder back
    where its target is missing. Returns the removed paths."""
    root = Path(root)
    removed: list[str] = []
    if not root.is_dir():
        return removed
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in list(dirnames) + filenames:
            m = LEFTOVER.match(name)
            if not m:
                continue
            p = here / name
            if name in dirnames:
                dirnames.remove(name)
            _drop_leftover(p, here / m.group("name"), m.group("what"))
            removed.append(str(p))
    return removed


def non_finite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating tensors that hold NaN or infinity."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def check_finite(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise ValueError naming `what` and the tensors if any holds NaN or infinity."""
    bad = non_finite(tensors)
    if bad:
        raise ValueError(f"{what} holds NaN or infinite values in {len(bad)} tensor(s) (e.g. {bad[0]}): the weights "
                         f"are unusable (a diverged training run?)")


def json_safe(obj: Any) -> Any:
    """`obj` with every NaN or infinite float (also inside lists and dicts) replaced by None: JSON has no NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
