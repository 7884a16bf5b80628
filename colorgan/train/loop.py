"""Shared run machinery: the run folder (config, JSONL + text logs, sample grids, snapshots),
progress bar, schedules, latent/noise sampling from explicit generators."""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import time
import uuid
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from colorgan.generator import must_be_finite
from colorgan.outputs import check_writable, prepare_output_folder, save_png
from colorgan.train.distributed import barrier, init_distributed
from fastlora.io import atomic_write_json, clean_interrupted, json_safe, load_json, non_finite

CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
TEXT_LOG = "train.log"
SAMPLES_DIR = "samples"
STATE_DIR = "state"
STATE_FILE = "state.pt"
CHECKPOINT_DIR = "checkpoint"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".lock"
EVAL_FILE = "eval.json"
PER_TASK_DIR = "checkpoints"
RUN_KIND_KEY = "run_kind"
RUN_ID_KEY = "run_id"  # unique per run folder's start (kept on resume): what scores cached for the run belong to
RESUME_CHANGES = ("iter",)  # settings a resumed run may change (the length of the run)
# what colorgan writes in a run folder (--overwrite removes a run folder holding nothing else)
RUN_ENTRIES = (CONFIG_FILE, LOG_FILE, TEXT_LOG, SAMPLES_DIR, STATE_DIR, CHECKPOINT_DIR, PER_TASK_DIR, SUMMARY_FILE,
               LOCK_FILE, EVAL_FILE)


@dataclass
class RunOptions:
    """Per-invocation settings, not part of the saved config."""

    device: str = "auto"
    amp: str = "auto"
    progress: bool = True
    stop_at: Optional[int] = None
    channels_last: bool = False  # models and batches in torch.channels_last memory format (faster convs on CPUs)
    inception: Optional[str] = None  # the near check's Inception network file (None: found as `colorgan eval` finds it)

    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


class RunFolder:
    """The output folder of one training run (all writes on the main rank only).

    A new run refuses an existing non-empty folder unless `overwrite`, which replaces only an earlier
    colorgan run folder holding nothing else and not holding one of `inputs` (colorgan.outputs);
    `resume` reuses the folder and appends to the logs. Either way, what an interrupted run left
    (temporary files, a checkpoint parked mid-replace) is cleaned up first, and the folder is locked
    so that a second process cannot train into it at the same time."""

    def __init__(self, path: Union[str, Path], *, kind: str, overwrite: bool = False, resume: bool = False,
                 is_main: bool = True, inputs: Sequence[Optional[Union[str, Path]]] = ()) -> None:
        self.path = Path(path)
        self.kind, self.is_main = kind, is_main
        self._lock: Optional[int] = None
        if resume:
            cfg = self.path / CONFIG_FILE
            if not cfg.is_file():
                raise FileNotFoundError(f"cannot resume {self.path}: no {CONFIG_FILE} there; is it a run folder?")
            found = load_json(cfg).get(RUN_KIND_KEY)
            if found != kind:
                raise ValueError(f"cannot resume {self.path}: that run is a {found!r} run, not {kind!r}")
            if is_main:
                self._lock = lock_folder(self.path)
                check_writable(self.path, "run folder")
        elif is_main:
            prepare_output_folder(self.path, "run", RUN_ENTRIES, overwrite=overwrite, inputs=inputs)
            self._lock = lock_folder(self.path)
        self.logger = logging.getLogger(f"colorgan.train.{id(self)}")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        if is_main:
            self.cleaned = clean_interrupted(self.path)
            (self.path / SAMPLES_DIR).mkdir(parents=True, exist_ok=True)
            (self.path / STATE_DIR).mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(self.path / TEXT_LOG)
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            self.logger.addHandler(handler)
            if self.cleaned:
                self.info(f"removed {len(self.cleaned)} leftover(s) of an interrupted write: {', '.join(self.cleaned[:3])}")

    # -- files
    @property
    def state_file(self) -> Path:
        return self.path / STATE_DIR / STATE_FILE

    def write_config(self, config: dict[str, Any]) -> None:
        if self.is_main:
            atomic_write_json(self.path / CONFIG_FILE, {RUN_KIND_KEY: self.kind, RUN_ID_KEY: uuid.uuid4().hex, **config})

    def read_config(self) -> dict[str, Any]:
        cfg = load_json(self.path / CONFIG_FILE)
        cfg.pop(RUN_KIND_KEY, None)
        return cfg

    def resume_config(self, changes: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """The saved config, with `changes` (settings that may differ on resume, see RESUME_CHANGES) applied
        and written back; anything else raises ValueError."""
        cfg = self.read_config()
        changes = dict(changes or {})
        bad = sorted(set(changes) - set(RESUME_CHANGES))
        if bad:
            raise ValueError(f"a resumed run keeps the settings it was started with; {', '.join(bad)} cannot change "
                             f"(only {', '.join(RESUME_CHANGES)} can); start a new run to change them")
        changed = {k: v for k, v in changes.items() if cfg.get(k) != v}
        if changed:
            self.info("resume changes " + ", ".join(f"{k} {cfg.get(k)} -> {v}" for k, v in changed.items()))
            cfg.update(changed)
            self.write_config(cfg)
        return cfg

    def log(self, record: dict[str, Any]) -> None:
        """One JSON line in log.jsonl (floats rounded for readability)."""
        if not self.is_main:
            return
        clean = json_safe({k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()})
        with open(self.path / LOG_FILE, "a") as f:
            f.write(json.dumps(clean, allow_nan=False) + "\n")

    def info(self, msg: str) -> None:
        if self.is_main:
            self.logger.info(msg)

    def write_summary(self, summary: dict[str, Any]) -> None:
        """summary.json, with `torch_threads`: the CPU thread counts the run has trained with, this process's and
        those of the processes before it (a resumed run), since results depend on them (summation order)."""
        if self.is_main:
            atomic_write_json(self.path / SUMMARY_FILE, {**summary, "torch_threads": self._threads_used()})

    def _threads_used(self) -> list[int]:
        used = {torch.get_num_threads()}
        try:  # the summary an earlier process of this run wrote; ignored if unreadable or not a list of counts
            earlier = load_json(self.path / SUMMARY_FILE).get("torch_threads", [])
        except (OSError, ValueError):
            earlier = []
        if isinstance(earlier, list) and all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                                             for n in earlier):
            used.update(earlier)
        return sorted(used)

    def save_grid(self, images: Tensor, name: str, nrow: Optional[int] = None) -> Optional[Path]:
        if not self.is_main:
            return None
        return save_png(self.path / SAMPLES_DIR / name, make_grid(images, nrow))

    def close(self) -> None:
        for h in list(self.logger.handlers):
            h.close()
            self.logger.removeHandler(h)
        if self._lock is not None:
            os.close(self._lock)  # releases the lock
            self._lock = None


def start_run(kind: str, cls: type, cfg: Any, out: Union[str, Path], body: Callable[..., dict[str, Any]], *,
              options: Optional[RunOptions], overwrite: bool, resume: bool, changes: Optional[dict[str, Any]],
              inputs: Callable[[Any], Sequence[Any]] = lambda cfg: ()) -> dict[str, Any]:
    """What every training run shares: the processes, the run folder (new, or resumed with its saved config
    of class `cls`), then `body(cfg, run, info, options, resume)`; the folder is closed whatever happens.
    inputs(cfg): what the new run reads (never removed by --overwrite)."""
    options = options or RunOptions()
    info = init_distributed(options.device)
    if cfg is None and not resume:
        raise ValueError(f"a new {kind} run needs a config")
    run = RunFolder(out, kind=kind, overwrite=overwrite, resume=resume, is_main=info.is_main,
                    inputs=() if resume else inputs(cfg))
    barrier(info)
    if resume:
        cfg = cls.from_dict(run.resume_config(changes))
    try:
        return body(cfg, run, info, options, resume)
    finally:
        run.close()


def lock_folder(folder: Path) -> int:
    """Hold an exclusive lock on `folder`/.lock for this process's lifetime (or until closed);
    refuse (RuntimeError) when another process holds it."""
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeError(f"another colorgan process is training in {folder} (it holds {folder / LOCK_FILE}); "
                           f"wait for it to finish or stop it first") from None
    return fd


class NonFiniteLoss(RuntimeError):
    """A loss (or weight) came out NaN or infinite; the update it would have made was not applied."""


def checked(values: dict[str, float]) -> dict[str, float]:
    """`values` unchanged, or NonFiniteLoss naming the first NaN or infinite one."""
    for name, v in values.items():
        if not math.isfinite(v):
            raise NonFiniteLoss(f"the {name} loss is {v}")
    return values


class TrainingDiverged(RuntimeError):
    """Training produced a NaN or infinite loss or weight; the run stops, keeping its last good save."""


def diverged(run: RunFolder, where: str, reason: Exception, lr: float) -> TrainingDiverged:
    """The error to raise when training diverges at `where` (logged in the run folder too)."""
    kept = (f"the last good checkpoint and state (from the last save) are kept in {run.path}"
            if run.state_file.exists() else "nothing was saved (no save had happened yet)")
    msg = (f"training diverged at {where}: {reason}; {kept}. Lower --lr (now {lr:g}) and start a new run"
           + (f", or --resume {run.path} to retry from the last save" if run.state_file.exists() else ""))
    run.info(msg)
    run.log({"diverged": where, "reason": str(reason)})
    return TrainingDiverged(msg)


def ensure_finite(models: dict[str, Optional[torch.nn.Module]]) -> None:
    """Raise NonFiniteLoss naming the first NaN or infinite parameter (w_avg, NaN until computed, aside)."""
    for prefix, m in models.items():
        if m is None:
            continue
        bad = non_finite(must_be_finite(m.state_dict()))
        if bad:
            raise NonFiniteLoss(f"{prefix} weight {bad[0]} is NaN or infinite ({len(bad)} tensor(s))")


def make_grid(images: Tensor, nrow: Optional[int] = None, pad: int = 2) -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] → one HxWx3 uint8 grid (white padding), `nrow` images per row."""
    x = images.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    n, _, h, w = x.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    rows = int(math.ceil(n / nrow))
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = \
            x[i].permute(1, 2, 0).numpy()
    return grid


def every(step: int, interval: int) -> bool:
    """True on steps 0, interval, 2·interval, ... (never when interval ≤ 0)."""
    return interval > 0 and step % interval == 0


def progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True, leave=True)


def format_losses(losses: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in losses.items())


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


# ----------------------------------------------------------------------------- latents and noise

def make_z(n: int, dim: int, gen: torch.Generator, device: torch.device) -> Tensor:
    return torch.randn(n, dim, generator=gen).to(device)


def mixing_z(n: int, dim: int, prob: float, gen: torch.Generator, device: torch.device) -> list[Tensor]:
    """rosinality's mixing_noise: two latents with probability `prob`, else one (drawn from `gen`)."""
    two = prob > 0 and float(torch.rand((), generator=gen)) < prob
    return [make_z(n, dim, gen, device) for _ in range(2 if two else 1)]


def style_kwargs(G, zs: Sequence[Tensor], gen: torch.Generator) -> dict[str, Any]:
    """forward kwargs with an explicit mixing cut and explicit noise maps (no global RNG)."""
    kw: dict[str, Any] = {"noise": G.make_noise(zs[0].shape[0], generator=gen)}
    if len(zs) == 2:
        kw["inject_index"] = int(torch.randint(1, G.n_latent, (), generator=gen))
    return kw


def requires_grad(params, flag: bool) -> None:
    for p in params:
        p.requires_grad_(flag)


def autocast_ctx(device: torch.device, amp: str):
    """bf16 autocast (CUDA or CPU) for the main loss passes when amp == "bf16" (regularisers run in fp32)."""
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_amp(amp: str, device: torch.device) -> str:
    if amp not in ("auto", "off", "bf16"):
        raise ValueError(f"amp must be auto, off or bf16, got {amp!r}")
    if amp == "auto":
        return "bf16" if device.type == "cuda" else "off"
    return amp
