"""The colorgan checkpoint folder: base weights, full architecture config, one folder per task.

Layout::

    CKPT/
      config.json                 format, version, generator/discriminator architecture, task list
      base.safetensors            "g_ema.*" (the generator), optional "d.*" and "g.*" (training G)
      tasks/<name>/               generator adapters (fastlora.save_task: adapter.safetensors +
                                  adapter_config.json with the base checksum)
      d_tasks/<name>/             discriminator adapters of that task, when it has any

Every write is atomic (temporary folder or file, then rename); an existing checkpoint
is replaced only with overwrite=True, and only when colorgan wrote it (see colorgan.outputs).
Loading is strict: it names missing, unexpected and mis-shaped keys, and refuses a base
without its checksum, non-finite weights, and task names or folders that are not safe.
"""
from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import torch
from torch import nn

import fastlora
from fastlora.bank import copy_strict
from fastlora.io import (atomic_directory, atomic_save_safetensors, atomic_write_json, check_finite, find_interrupted,
                         load_json, load_safetensors, sha256_file)

from colorgan.discriminator import Discriminator
from colorgan.generator import Generator, must_be_finite
from colorgan.outputs import check_replaceable, check_writable, write_marker
from colorgan.version import __version__

FORMAT = "colorgan-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
BASE_FILE = "base.safetensors"
TASKS_DIR = "tasks"
D_TASKS_DIR = "d_tasks"
RESERVED_TASK_NAMES = ("base", "all")
EVAL_FILE = "eval.json"
ENTRIES = (CONFIG_FILE, BASE_FILE, TASKS_DIR, D_TASKS_DIR, EVAL_FILE)  # what colorgan writes in a checkpoint
SHIPPED_DIR = Path(__file__).parent / "assets" / "base"
PathLike = Union[str, os.PathLike]


def shipped_bases() -> dict[str, Path]:
    """The base checkpoints shipped inside the package, by name (e.g. "emoji32")."""
    if not SHIPPED_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(SHIPPED_DIR.iterdir()) if (p / CONFIG_FILE).is_file()}


def resolve_checkpoint(path: PathLike) -> Path:
    """A checkpoint folder; or the name of a shipped base (see `shipped_bases`) unless a checkpoint folder
    of that name is in the working directory (a data folder called "emoji32" does not shadow the base).
    A folder caught mid-replace by a kill (see fastlora.io.find_interrupted) is found where it was parked."""
    p = Path(path)
    if (p / CONFIG_FILE).is_file():
        return p
    shipped = shipped_bases().get(str(path))
    if shipped is not None:
        return shipped
    return find_interrupted(p) or p


def is_shipped(path: PathLike) -> bool:
    """Whether `path` resolves to a base inside the package (read-only: nothing is written there)."""
    return resolve_checkpoint(path).resolve().is_relative_to(SHIPPED_DIR.resolve())


def check_task_name(name: str) -> None:
    """Task names become folder names and CLI values (fastlora.check_task_name), and are not reserved words."""
    fastlora.check_task_name(name)
    if name in RESERVED_TASK_NAMES:
        raise ValueError(f"{name!r} is reserved (it selects the base or every task when generating); choose another task name")


def _has_tasks(model: Optional[nn.Module]) -> bool:
    return model is not None and any(True for _ in fastlora.adapted_layers(model))


def _model_tasks(model: Optional[nn.Module]) -> list[str]:
    return fastlora.task_names(model) if _has_tasks(model) else []


def _base_tensors(prefix: str, model: nn.Module, dtype: Optional[torch.dtype] = None) -> dict[str, torch.Tensor]:
    # clones: safetensors refuses tensors that share memory (e.g. g_train is G)
    return {f"{prefix}.{k}": (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach()).clone()
            for k, v in fastlora.base_state_dict(model).items()}


def _task_entry(G: Generator, D: Optional[Discriminator], name: str) -> dict[str, Any]:
    cfg = fastlora.task_config(G, name)
    counts = fastlora.count_parameters(G, name)
    entry = {"name": name, "dir": f"{TASKS_DIR}/{name}", "adapter": cfg.to_dict(),
             "stored_params": counts["stored"], "discriminator": name in _model_tasks(D)}
    if entry["discriminator"]:
        entry["d_dir"] = f"{D_TASKS_DIR}/{name}"
        entry["d_stored_params"] = fastlora.count_parameters(D, name)["stored"]
    return entry


def check_checkpoint_output(path: PathLike, overwrite: bool, inputs: Sequence[Optional[PathLike]] = ()) -> None:
    """Fail early (before any work) unless a checkpoint may be written at `path`: outside the package, new, or
    (with overwrite) an earlier colorgan checkpoint holding nothing else that is not one of `inputs`."""
    path = Path(path)
    check_writable(path, "checkpoint")
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
        check_replaceable(path, "checkpoint", ENTRIES, inputs)


def save_checkpoint(path: PathLike, G: Generator, D: Optional[Discriminator] = None, *,
                    g_train: Optional[Generator] = None, tasks: Optional[Sequence[str]] = None,
                    overwrite: bool = False, source: Optional[dict] = None,
                    storage_dtype: Optional[torch.dtype] = None, inputs: Sequence[Optional[PathLike]] = ()) -> Path:
    """Write G (as g_ema), optionally D and the training generator, and G's task adapters (all,
    or `tasks`) to the folder `path`, atomically. A NaN `w_avg` is computed first (G.update_w_avg).
    storage_dtype: store the base tensors in this dtype (loads cast back to the model's dtype);
    `pack_checkpoint` rounds the model first so the recorded base checksum matches what loads.
    With overwrite, an existing folder is replaced only if it is a colorgan checkpoint holding nothing
    else and is not one of `inputs` (colorgan.outputs.check_replaceable). Non-finite weights are refused."""
    path = Path(path)
    check_checkpoint_output(path, overwrite, inputs)
    if not isinstance(G, Generator):
        raise TypeError(f"G must be a colorgan.Generator, got {type(G).__name__}")
    if D is not None and not isinstance(D, Discriminator):
        raise TypeError(f"D must be a colorgan.Discriminator, got {type(D).__name__}")
    if g_train is not None and g_train.config() != G.config():
        raise ValueError("g_train has a different architecture from G")
    names = list(_model_tasks(G) if tasks is None else tasks)
    for t in names:
        check_task_name(t)
        if t not in _model_tasks(G):
            raise KeyError(f"unknown task {t!r}; the generator has tasks {_model_tasks(G)}")
    if torch.isnan(G.w_avg).any():
        G.update_w_avg()
    base = _base_tensors("g_ema", G, storage_dtype)
    if D is not None:
        base.update(_base_tensors("d", D, storage_dtype))
    if g_train is not None:
        base.update(_base_tensors("g", g_train, storage_dtype))
    modules = ["g_ema"] + (["d"] if D is not None else []) + (["g"] if g_train is not None else [])
    check_finite(must_be_finite(base), "the model being saved")

    def replaceable(p: Path) -> None:
        check_replaceable(p, "checkpoint", ENTRIES, inputs)

    with atomic_directory(path, overwrite=overwrite, check_replace=replaceable) as tmp:
        write_marker(tmp, "checkpoint")
        atomic_save_safetensors(base, tmp / BASE_FILE, metadata={"format": FORMAT, "modules": ",".join(modules)})
        entries = []
        for t in names:
            fastlora.save_task(G, t, tmp / TASKS_DIR / t)
            if t in _model_tasks(D):
                fastlora.save_task(D, t, tmp / D_TASKS_DIR / t)
            entries.append(_task_entry(G, D, t))
        config = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "colorgan_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "generator": G.config(), "discriminator": None if D is None else D.config(),
            "base": {"file": BASE_FILE, "modules": modules, "sha256": sha256_file(tmp / BASE_FILE),
                     "g_ema_checksum": fastlora.base_checksum(G),
                     "generator_params": fastlora.count_parameters(G)["base"]},
            "tasks": entries, "source": source or {},
        }
        atomic_write_json(tmp / CONFIG_FILE, config)
    return path


def read_checkpoint_config(path: PathLike) -> dict[str, Any]:
    """Read and validate `config.json` of a checkpoint folder (or of a shipped base, by name)."""
    path = resolve_checkpoint(path)
    if not path.is_dir():
        raise FileNotFoundError(f"expected a colorgan checkpoint folder at {path} or the name of a shipped base "
                                f"{sorted(shipped_bases())}, found {'a file' if path.exists() else 'nothing'} "
                                f"(convert a .pt with `colorgan convert`)")
    cfg = load_json(path / CONFIG_FILE)
    if cfg.get("format") != FORMAT:
        raise ValueError(f"{path / CONFIG_FILE} is not a colorgan checkpoint config "
                         f"(format={cfg.get('format')!r}, expected {FORMAT!r})")
    if cfg.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format version {cfg.get('format_version')!r} is not supported "
                         f"(this colorgan reads version {FORMAT_VERSION})")
    for key in ("generator", "base", "tasks"):
        if key not in cfg:
            raise ValueError(f"{path / CONFIG_FILE} lacks the {key!r} entry")
    _check_task_entries(cfg, path / CONFIG_FILE)
    return cfg


def _check_task_entries(cfg: dict[str, Any], file: Path) -> None:
    """Task entries are untrusted: safe names, and the folders colorgan writes (tasks/<name>, d_tasks/<name>)."""
    if not isinstance(cfg["tasks"], list) or not isinstance(cfg["base"], dict):
        raise ValueError(f"{file}: 'tasks' must be a list and 'base' an object")
    seen = set()
    for e in cfg["tasks"]:
        name = e.get("name") if isinstance(e, dict) else None
        try:
            check_task_name(name)
        except ValueError as exc:
            raise ValueError(f"{file}: bad task entry: {exc}") from None
        if name in seen:
            raise ValueError(f"{file}: task {name!r} is listed twice")
        seen.add(name)
        for key, folder in (("dir", TASKS_DIR), ("d_dir", D_TASKS_DIR)):
            if key in e and e[key] != f"{folder}/{name}":
                raise ValueError(f"{file}: task {name!r} has {key} {e[key]!r}; colorgan keeps a task's adapters in "
                                 f"{folder}/{name} and reads nothing else")


def _load_strict(model: nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    copy_strict(fastlora.base_state_dict(model), tensors, f"{what} does not match the architecture in config.json")


def _split(tensors: dict[str, torch.Tensor], modules: Iterable[str], file: Path) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {m: {} for m in modules}
    stray = []
    for k, v in tensors.items():
        prefix, _, rest = k.partition(".")
        if prefix in out and rest:
            out[prefix][rest] = v
        else:
            stray.append(k)
    if stray:
        raise ValueError(f"{file} has keys outside the modules {sorted(out)} listed in config.json: {sorted(stray)[:10]}")
    return out


def load_checkpoint(path: PathLike, device: Union[str, torch.device] = "cpu", *, tasks: Optional[Sequence[str]] = None,
                    load_d: bool = True, load_g_train: bool = False,
                    verify: bool = True) -> tuple[Generator, Optional[Discriminator], dict[str, Any]]:
    """Load a checkpoint folder: (G with its tasks, D or None, info).

    tasks: which tasks to load (default all listed in config.json). info has the config
    ("config"), the folder ("path"), the loaded task names ("tasks") and, with
    load_g_train, the training generator ("g", None when the file has none). `path` may name a
    shipped base ("emoji32")."""
    path = resolve_checkpoint(path)
    cfg = read_checkpoint_config(path)
    file = path / BASE_FILE
    if verify:
        if not isinstance(cfg["base"].get("sha256"), str):
            raise ValueError(f"{path / CONFIG_FILE} records no checksum of {BASE_FILE} (base.sha256), so the base "
                             f"cannot be verified; pass verify=False only if you trust the folder")
        if file.is_file() and sha256_file(file) != cfg["base"]["sha256"]:
            raise ValueError(f"{file} does not match the checksum in {path / CONFIG_FILE}: corrupt or changed after saving")
    modules = cfg["base"].get("modules", ["g_ema"])
    tensors = load_safetensors(file)
    check_finite(must_be_finite(tensors), str(file))
    parts = _split(tensors, modules, file)
    G = Generator.from_config(cfg["generator"])
    _load_strict(G, parts["g_ema"], f"{file} (g_ema)")
    D = None
    if load_d and cfg.get("discriminator") is not None:
        if "d" not in parts:
            raise ValueError(f"{path / CONFIG_FILE} describes a discriminator but {file} holds no 'd.*' weights")
        D = Discriminator.from_config(cfg["discriminator"])
        _load_strict(D, parts["d"], f"{file} (d)")
    g_train = None
    if load_g_train and "g" in parts:
        g_train = Generator.from_config(cfg["generator"])
        _load_strict(g_train, parts["g"], f"{file} (g)")
    listed = {e["name"]: e for e in cfg["tasks"]}
    wanted = list(listed) if tasks is None else list(tasks)
    for name in wanted:
        if name not in listed:
            raise KeyError(f"unknown task {name!r}; {path} has tasks {list(listed)}")
        entry = listed[name]
        tdir = path / TASKS_DIR / name
        if not tdir.is_dir():
            raise FileNotFoundError(f"{path / CONFIG_FILE} lists task {name!r} but {tdir} is missing")
        fastlora.load_task(G, tdir, task=name)
        if D is not None and entry.get("discriminator"):
            fastlora.load_task(D, path / D_TASKS_DIR / name, task=name)
    G.to(device).eval()
    if D is not None:
        D.to(device).eval()
    if g_train is not None:
        g_train.to(device)
    info = {"config": cfg, "path": str(path), "tasks": wanted, "g": g_train}
    return G, D, info


def save_task_to_checkpoint(path: PathLike, G: Generator, task: str, D: Optional[Discriminator] = None, *,
                            overwrite: bool = False) -> Path:
    """Add (or, with overwrite, replace) one task of G (and D) in an existing checkpoint; the
    task folder and config.json are each written atomically. G's base must be the checkpoint's."""
    path = resolve_checkpoint(path)
    if is_shipped(path):
        raise PermissionError(f"{path} is a base shipped inside the package; train into a run folder "
                              f"(`colorgan train --ckpt {path.name} --out RUN`) instead of adding tasks to it")
    check_writable(path, "checkpoint")
    check_task_name(task)
    cfg = read_checkpoint_config(path)
    if G.config() != cfg["generator"]:
        raise ValueError(f"the generator's architecture differs from the one in {path / CONFIG_FILE}")
    recorded = cfg["base"].get("g_ema_checksum")
    if recorded and recorded != fastlora.base_checksum(G):
        raise ValueError(f"the generator's base weights differ from the base in {path} (base checksum); adapters "
                         f"must be stored with the base they were trained on")
    names = [e["name"] for e in cfg["tasks"]]
    if task in names and not overwrite:
        raise FileExistsError(f"{path} already has task {task!r}; pass overwrite=True (CLI: --overwrite) to replace it")
    fastlora.save_task(G, task, path / TASKS_DIR / task, overwrite=overwrite)
    if task in _model_tasks(D):
        fastlora.save_task(D, task, path / D_TASKS_DIR / task, overwrite=overwrite)
    entry = _task_entry(G, D, task)
    cfg["tasks"] = [e for e in cfg["tasks"] if e["name"] != task] + [entry]
    atomic_write_json(path / CONFIG_FILE, cfg)
    return path / TASKS_DIR / task


def pack_checkpoint(src: PathLike, dst: PathLike, *, dtype: torch.dtype = torch.float16,
                    overwrite: bool = False) -> Path:
    """A small distributable copy of a base checkpoint: g_ema and d stored in `dtype`, without the
    training generator or tasks. The weights are rounded to `dtype` before the base checksum is
    taken, so the packed base is exactly what loads, and adapters trained on it name it."""
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype such as torch.float16, got {dtype!r}")
    check_checkpoint_output(dst, overwrite, [resolve_checkpoint(src)])
    G, D, info = load_checkpoint(src, tasks=[])
    with torch.no_grad():
        for model in (G, D):
            for t in (fastlora.base_state_dict(model).values() if model is not None else ()):
                if t.is_floating_point():
                    t.copy_(t.to(dtype).to(t.dtype))
    source = dict(info["config"].get("source") or {}, packed_from=str(Path(src)),
                  storage_dtype=str(dtype).removeprefix("torch."))
    return save_checkpoint(dst, G, D, overwrite=overwrite, source=source, storage_dtype=dtype, inputs=[info["path"]])


def parameter_report(G: Generator, D: Optional[Discriminator] = None) -> dict[str, Any]:
    """Base parameter counts and, per task, the stored and trainable adapter parameters
    (generator, plus "d_stored"/"d_trainable" for a task that also adapts D)."""
    out: dict[str, Any] = {"generator": fastlora.count_parameters(G)["base"]}
    if D is not None:
        out["discriminator"] = fastlora.count_parameters(D)["base"]
    tasks: dict[str, dict[str, int]] = {}
    for t in _model_tasks(G):
        c = fastlora.count_parameters(G, t)
        tasks[t] = {"stored": c["stored"], "trainable": c["trainable"]}
    for t in _model_tasks(D):
        c = fastlora.count_parameters(D, t)
        tasks.setdefault(t, {}).update(d_stored=c["stored"], d_trainable=c["trainable"])
    out["tasks"] = tasks
    return out
