"""Per-task ONNX export with a checker pass and an onnxruntime-versus-PyTorch parity check.

`export_generator(G, task, path)` writes one file; `export_checkpoint(ckpt, "all", out)`
writes one file per task of a checkpoint folder. Every file is written to a temporary
file beside its destination, checked (`onnx.checker`, then an onnxruntime session run
on fresh latents against the unmerged PyTorch generator, at two batch sizes), and only
then renamed into place: a failed export leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

import fastlora
from colorgan.checkpoint import TASKS_DIR, load_checkpoint, read_checkpoint_config, resolve_checkpoint
from colorgan.generate import BASE, apply_strengths, resolve_tasks
from colorgan.generator import must_be_finite
from colorgan.outputs import check_replaceable_file
from fastlora.io import check_finite, umask_mode
from export.graph import INPUTS, NOISE, ExportGenerator, reference_forward, resolve_dtype, task_center

PathLike = Union[str, os.PathLike]
DEFAULT_OPSET = 17
MIN_OPSET = 13
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Parity limits against the fp32 PyTorch generator: ‖out − ref‖/‖ref‖ and max |out − ref|
    (images are roughly in [-1, 1])."""

    rel: float
    max_abs: float


# Measured on random generators with randomised adapters of every kind (docs/export.md): fp32 3e-7..2.4e-6
# rel, max abs <= 2.3e-5 (16..256 px); fp16 7e-4..3.7e-3 rel, max abs <= 3.3e-2. Headroom >= 40x (fp32), ~5x (fp16).
TOLERANCES = {"fp32": Tolerance(rel=1e-4, max_abs=2e-3), "fp16": Tolerance(rel=2e-2, max_abs=1.5e-1)}


class ExportError(RuntimeError):
    """An export that could not be written or did not pass its checks (nothing was left behind)."""


@dataclasses.dataclass
class ExportResult:
    """What one export wrote and measured."""

    path: str
    task: str
    dtype: str
    input: str
    psi: bool
    noise: str
    opset: int
    size_bytes: int
    max_abs: float
    rel: float
    tolerance: Tolerance
    batches: tuple[int, ...]
    providers: list[str]
    adapter_params: int
    adapter_bytes: int
    base_params: int

    def summary(self) -> str:
        """Human-readable report (several lines)."""
        mb = self.size_bytes / 2 ** 20
        if self.task == BASE:
            adapters = "the base model (no adapters)"
        else:
            adapters = f"task adapters {self.adapter_params:,} params = {_human(self.adapter_bytes)} stored"
        return "\n".join([
            f"exported {self.task!r} -> {self.path}",
            f"  graph: {self.dtype}, opset {self.opset}, input {self.input!r}{', psi input' if self.psi else ''}, "
            f"noise {self.noise}; onnx.checker ok",
            f"  parity vs PyTorch (fp32, adapters unmerged; batches {', '.join(map(str, self.batches))}): "
            f"max abs {self.max_abs:.3g}, rel {self.rel:.3g} "
            f"(limits for {self.dtype}: rel {self.tolerance.rel:g}, max abs {self.tolerance.max_abs:g}) ok",
            f"  onnxruntime providers: {', '.join(self.providers)}",
            f"  size: {mb:.2f} MB ONNX ({self.base_params:,} base params merged) vs {adapters}",
        ])


def _human(n: int) -> str:
    for unit, f in (("MB", 2 ** 20), ("kB", 2 ** 10)):
        if n >= f:
            return f"{n / f:.1f} {unit}"
    return f"{n} B"


# ----------------------------------------------------------------------------- onnxruntime

def make_session(path: PathLike, device: str = "cpu", *, threads: Optional[int] = None, tf32: bool = False):
    """An onnxruntime session on the CPU provider, or on CUDA (CPU kept only as a fallback for
    unsupported nodes; TF32 off unless `tf32`). Raises ExportError when CUDA was asked for and the
    session does not have it."""
    import onnxruntime as ort

    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    providers = [(CUDA, {"use_tf32": "1" if tf32 else "0"}), CPU] if device == "cuda" else [CPU]
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ExportError(f"onnxruntime could not load {path} on {device}: {exc}") from exc
    got = session.get_providers()
    if device == "cuda" and CUDA not in got:
        raise ExportError(
            f"CUDA was requested but onnxruntime fell back to {got} (available in this build: "
            f"{ort.get_available_providers()}, onnxruntime {ort.__version__}). The CUDA provider needs a GPU, a "
            f"matching CUDA/cuDNN runtime and only the 'onnxruntime-gpu' package installed (having 'onnxruntime' "
            f"installed beside it leaves only the CPU provider); use --device cpu otherwise")
    return session


def run_session(session, inputs: Sequence[torch.Tensor]) -> np.ndarray:
    """Run a session on inputs given in the graph's input order (float32)."""
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(inputs):
        raise ValueError(f"the graph takes inputs {names} but {len(inputs)} tensors were given")
    feed = {n: np.ascontiguousarray(t.detach().cpu().float().numpy()) for n, t in zip(names, inputs)}
    return session.run(["image"], feed)[0]


def errors(out: np.ndarray, ref: torch.Tensor) -> tuple[float, float]:
    """(max |out − ref|, ‖out − ref‖/‖ref‖) in float64; non-finite outputs give inf."""
    o = np.asarray(out, dtype=np.float64)
    r = ref.detach().double().cpu().numpy()
    if o.shape != r.shape:
        raise ExportError(f"onnxruntime returned an image of shape {list(o.shape)}, expected {list(r.shape)}")
    if not np.isfinite(o).all():
        return float("inf"), float("inf")
    diff = o - r
    return float(np.abs(diff).max()), float(np.linalg.norm(diff) / max(np.linalg.norm(r), 1e-300))


# ----------------------------------------------------------------------------- writing

def _check_options(input: str, noise: str, dtype: Any, opset: int, device: str) -> str:
    if input not in INPUTS:
        raise ValueError(f"input must be one of {INPUTS}, got {input!r}")
    if noise not in NOISE:
        raise ValueError(f"noise must be one of {NOISE}, got {noise!r}")
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset must be an integer >= {MIN_OPSET}, got {opset!r}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return resolve_dtype(dtype)[0]


def _make_parents(path: Path) -> list[Path]:
    """Create the missing parent folders of `path`; returns those created (deepest last)."""
    missing = []
    p = path.parent
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot write {path}: cannot create the folder {path.parent} ({exc})") from exc
    return list(reversed(missing))


def _remove_empty(dirs: Sequence[Path]) -> None:
    for d in reversed(dirs):
        with contextlib.suppress(OSError):
            d.rmdir()


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise ExportError(f"cannot write {path}: it is a folder")
    check_replaceable_file(path, overwrite)  # outside the package; replaces only an ONNX file colorgan wrote


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    os.chmod(tmp, umask_mode())  # mkstemp made it private; give it the permissions of a normal new file
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic, and never replaces a file that appeared meanwhile
    except FileExistsError:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (CLI: --overwrite) to replace it") from None
    except OSError:
        if path.exists():
            raise FileExistsError(f"{path} already exists; pass overwrite=True (CLI: --overwrite) to replace it") from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def _torch_export(module: ExportGenerator, example: tuple, file: Path, opset: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, str(file), dynamo=False, input_names=module.input_names(),
                          output_names=["image"], dynamic_axes=module.dynamic_axes(), opset_version=opset,
                          do_constant_folding=True)


def to_fp16(model):
    """Cast a float32 graph traced from an fp32 `ExportGenerator` to fp16 weights and arithmetic, keeping
    float32 inputs and output (Casts at the boundary). Tracing in fp32 and casting the graph gives the
    same kind of graph as tracing the fp16 module, without running fp16 kernels in PyTorch on the CPU
    (slow there, or missing)."""
    from onnx import TensorProto, helper, numpy_helper

    F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16
    g = model.graph

    def half(t):
        return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name)

    for init in g.initializer:
        if init.data_type == F32:
            init.CopyFrom(half(init))
    for node in g.node:
        for a in node.attribute:
            if node.op_type == "Constant" and a.name == "value" and a.t.data_type == F32:
                a.t.CopyFrom(half(a.t))
            elif node.op_type == "Constant" and a.name in ("value_float", "value_floats"):
                raise ExportError(f"fp16 conversion: unexpected Constant attribute {a.name} in node {node.name}")
            elif node.op_type == "Cast" and a.name == "to" and a.i == F32:
                a.i = F16
    casts_in = []
    for inp in g.input:
        if inp.type.tensor_type.elem_type != F32:
            continue
        new = f"{inp.name}__fp16"
        for node in g.node:
            node.input[:] = [new if i == inp.name else i for i in node.input]
        casts_in.append(helper.make_node("Cast", [inp.name], [new], to=F16, name=f"cast_in_{inp.name}"))
    for out in g.output:
        inner = f"{out.name}__fp16"
        for node in g.node:
            node.output[:] = [inner if o == out.name else o for o in node.output]
        g.node.append(helper.make_node("Cast", [inner], [out.name], to=F32, name=f"cast_out_{out.name}"))
    for n in reversed(casts_in):
        g.node.insert(0, n)
    del g.value_info[:]
    return model


def _add_metadata(file: Path, meta: dict[str, str], fp16: bool = False) -> None:
    import onnx

    model = onnx.load(str(file))
    if fp16:
        model = to_fp16(model)
    del model.metadata_props[:]
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, str(v)
    model.doc_string = (f"colorgan StyleGAN2 generator, task {meta.get('colorgan.task')!r} merged into the weights "
                        f"(plain graph: no adapter logic, no random ops)")
    onnx.save(model, str(file))


def _probe_module(G: nn.Module, task: Optional[str], *, input: str, psi: bool, noise: str, center, gen) -> ExportGenerator:
    """Step 1: the export module in fp32 against G itself (graph or merge mistakes surface before any file exists)."""
    probe = ExportGenerator(G, task, input=input, psi_input=psi, noise=noise, dtype="fp32", w_avg=center)
    check_in = probe.example_inputs(2, gen)
    with torch.no_grad():
        ref = reference_forward(G, task, check_in, input=input, psi_input=psi, noise=noise, center=center)
        m, r = errors(probe(*check_in).numpy(), ref)
    if not (r <= TOLERANCES["fp32"].rel and m <= TOLERANCES["fp32"].max_abs):
        raise ExportError(f"the export module differs from the PyTorch generator before export (max abs {m:.3g}, "
                          f"rel {r:.3g}); this is a bug in export.graph")
    return probe  # fp16: traced in fp32, then the graph is cast (to_fp16)


def _write_checked(module: ExportGenerator, G: nn.Module, task: Optional[str], tmp: Path, *, input: str, psi: bool,
                   noise: str, dname: str, opset: int, device: str, batches: Sequence[int], center, gen,
                   extra_metadata: Optional[dict[str, str]], say: Callable[[str], None]) -> tuple[float, float, list]:
    """Steps 2-4: trace and write `tmp`, run onnx.checker, then compare an onnxruntime session of the file with
    G on fresh latents at every batch size; returns (worst max abs, worst rel, providers)."""
    import onnx

    with torch.no_grad():  # batch 2, so no size-1 specialisation
        _torch_export(module, module.example_inputs(2, torch.Generator().manual_seed(0)), tmp, opset)
    meta = module.metadata()
    meta.update({"colorgan.dtype": dname, "colorgan.opset": str(opset), **(extra_metadata or {})})
    _add_metadata(tmp, meta, fp16=dname == "fp16")
    try:
        onnx.checker.check_model(str(tmp), full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker rejected the exported graph: {exc}") from exc
    session = make_session(tmp, device)
    providers = session.get_providers()
    worst_m, worst_r = 0.0, 0.0
    for b in batches:
        x = module.example_inputs(int(b), gen, psi=0.7)
        ref = reference_forward(G, task, x, input=input, psi_input=psi, noise=noise, center=center)
        m, r = errors(run_session(session, x), ref)
        say(f"  parity batch {b}: max abs {m:.3g}, rel {r:.3g}")
        worst_m, worst_r = max(worst_m, m), max(worst_r, r)
    del session
    tol = TOLERANCES[dname]
    if not (worst_r <= tol.rel and worst_m <= tol.max_abs):
        raise ExportError(f"onnxruntime output differs from PyTorch beyond the {dname} limits: max abs "
                          f"{worst_m:.3g} (limit {tol.max_abs:g}), rel {worst_r:.3g} (limit {tol.rel:g}); "
                          f"nothing was written")
    return worst_m, worst_r, providers


def export_generator(G: nn.Module, task: Optional[str], path: PathLike, *, input: str = "z", psi: bool = False,
                     noise: str = "const", dtype: Any = "fp32", opset: int = DEFAULT_OPSET, device: str = "cpu",
                     overwrite: bool = False, batches: Sequence[int] = (1, 4), seed: int = 1234,
                     adapter_bytes: Optional[int] = None, extra_metadata: Optional[dict[str, str]] = None,
                     log: Optional[Callable[[str], None]] = None) -> ExportResult:
    """Write `task` of generator G (None or "base": the base) as one ONNX file at `path`.

    The task is merged in fp32 and cast to `dtype` ("fp32" | "fp16"). Before writing, the export
    module is compared with G in PyTorch; after writing, `onnx.checker` runs and an onnxruntime
    session on `device` is compared with G on fresh latents at each of `batches` (all from the
    same file); errors above `TOLERANCES[dtype]` fail the export (ExportError) and remove the file.
    """
    dname = _check_options(input, noise, dtype, opset, device)
    task = None if task in (None, BASE) else task
    if task is not None and task not in fastlora.task_names(G):
        raise KeyError(f"unknown task {task!r}; available: {fastlora.task_names(G)} (or 'base')")
    if not batches or any(int(b) < 1 for b in batches):
        raise ValueError(f"batches must be positive integers, got {list(batches)}")
    path = Path(path)
    _refuse_existing(path, overwrite)
    weights = {**fastlora.base_state_dict(G), **(fastlora.task_state_dict(G, task) if task else {})}
    check_finite(must_be_finite(weights), f"the generator{f' with task {task!r}' if task else ''}")
    if G.device.type != "cpu" or G.input.input.dtype != torch.float32:
        G = copy.deepcopy(G).float().cpu()  # the reference and the merge run in fp32 on the CPU
    center = task_center(G, task) if psi else None
    gen = torch.Generator().manual_seed(seed)
    module = _probe_module(G, task, input=input, psi=psi, noise=noise, center=center, gen=gen)
    created = _make_parents(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        _remove_empty(created)
        raise ExportError(f"cannot write {path}: {exc}") from exc
    tmp = Path(tmp_name)
    try:
        worst_m, worst_r, providers = _write_checked(
            module, G, task, tmp, input=input, psi=psi, noise=noise, dname=dname, opset=opset, device=device,
            batches=batches, center=center, gen=gen, extra_metadata=extra_metadata, say=log or (lambda s: None))
        _publish(tmp, path, overwrite)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        _remove_empty(created)
        if isinstance(exc, OSError) and not isinstance(exc, FileExistsError):
            raise ExportError(f"cannot write {path}: {exc}") from exc
        raise
    return _result(G, task, path, dname, input, psi, noise, opset, worst_m, worst_r, batches, providers, adapter_bytes)


def _result(G, task, path: Path, dname: str, input: str, psi: bool, noise: str, opset: int, worst_m: float,
            worst_r: float, batches, providers, adapter_bytes: Optional[int]) -> ExportResult:
    if task is None:
        n_adapter, b_adapter = 0, 0
    else:
        tensors = fastlora.task_state_dict(G, task)
        n_adapter = sum(t.numel() for t in tensors.values())
        b_adapter = adapter_bytes if adapter_bytes is not None else sum(
            t.numel() * t.element_size() for t in tensors.values())
    return ExportResult(path=str(path), task=BASE if task is None else task, dtype=dname, input=input, psi=bool(psi),
                        noise=noise, opset=opset, size_bytes=path.stat().st_size, max_abs=worst_m, rel=worst_r,
                        tolerance=TOLERANCES[dname], batches=tuple(int(b) for b in batches), providers=providers,
                        adapter_params=n_adapter, adapter_bytes=b_adapter,
                        base_params=fastlora.count_parameters(G)["base"])


def output_paths(tasks: Sequence[str], out: PathLike, many: bool) -> dict[str, Path]:
    """Destination per task: `out` itself for one task given as a file path, else `out/<task>.onnx`."""
    out_s = os.fspath(out)
    out = Path(out)
    if many or out.is_dir() or out_s.endswith(("/", os.sep)):
        if out.exists() and not out.is_dir():
            raise ExportError(f"out {out} must be a folder when exporting several tasks, but it is a file")
        return {t: out / f"{t}.onnx" for t in tasks}
    return {tasks[0]: out}


def export_checkpoint(ckpt: PathLike, task: Union[str, Sequence[str]], out: PathLike, *, input: str = "z",
                      psi: bool = False, noise: str = "const", dtype: Any = "fp32", opset: int = DEFAULT_OPSET,
                      device: str = "cpu", overwrite: bool = False, batches: Sequence[int] = (1, 4),
                      log: Optional[Callable[[str], None]] = None,
                      strengths: Optional[Mapping[str, float]] = None) -> list[ExportResult]:
    """Export tasks of a checkpoint folder: `task` is a name, "base", "all" or a comma list; `strengths`: {task: s}
    merges those tasks at strength s instead of their saved one (`colorgan.generate.apply_strengths`).

    One task (not "all") → `out` is the file (or, for an existing folder or a path ending in '/',
    `out/<task>.onnx`); several → `out` is a folder of `<task>.onnx`. Everything (task names,
    existing files) is checked before the first file is written."""
    ckpt = resolve_checkpoint(ckpt)
    _check_options(input, noise, dtype, opset, device)
    cfg = read_checkpoint_config(ckpt)
    listed = {e["name"]: e for e in cfg["tasks"]}
    tasks = resolve_tasks(task, list(listed))
    many = len(tasks) > 1 or (isinstance(task, str) and "all" in [s.strip() for s in task.split(",")])
    paths = output_paths(tasks, out, many)
    for p in paths.values():
        _refuse_existing(p, overwrite)
    G, _, _ = load_checkpoint(ckpt, "cpu", tasks=[t for t in tasks if t != BASE], load_d=False)
    apply_strengths(G, strengths, tasks, list(listed))
    results = []
    for t in tasks:
        adapter_bytes = None
        if t != BASE:
            f = Path(ckpt) / TASKS_DIR / t / fastlora.bank.ADAPTER_FILE
            adapter_bytes = f.stat().st_size if f.is_file() else None
        res = export_generator(G, t, paths[t], input=input, psi=psi, noise=noise, dtype=dtype, opset=opset,
                               device=device, overwrite=overwrite, batches=batches, adapter_bytes=adapter_bytes,
                               extra_metadata={"colorgan.base_checksum": cfg["base"].get("g_ema_checksum", "")},
                               log=log)
        if log:
            log(res.summary())
        results.append(res)
    return results


def export_task(ckpt: PathLike, task: str, path: PathLike, **options: Any) -> dict[str, Any]:
    """Export one task (or "base") of a checkpoint folder to the file `path`; returns the
    `ExportResult` as a plain dict (JSON-friendly). Options as for `export_checkpoint`."""
    if not isinstance(task, str) or task == "all" or "," in task:
        raise ValueError(f"export_task exports one task (a name or 'base'), got {task!r}; use export_checkpoint")
    (res,) = export_checkpoint(ckpt, task, path, **options)
    return dataclasses.asdict(res)
