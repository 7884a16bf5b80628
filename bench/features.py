"""What this machine and this checkout can do, detected in one place for the GPU session and the benchmarks.

Each feature is found, or absent with the reason, and the session records the lot in env.json, so a
result says what it was measured with. Capabilities the fused path may gain (channels-last activations,
a CUDA-graph API for the generator forward) are read from a declaration, never guessed from behaviour:

* `fastlora.FEATURES` — a collection of capability names the fused path declares (a set, tuple or
  dict of names; absent means none). Names read here: "channels_last" (the fused ops take and return
  torch.channels_last activations without converting them), "cuda_graph" (the generator forward can be
  captured and replayed; launches free of host synchronisation).
* The generator-graph entry point: the first of `GENERATOR_GRAPH_APIS` that exists. It is called as
  `api(G, z)` (a function) or `G.<name>(z)` (a method), z being example latents that fix the batch, and
  must return something that replays G(z) for those latents: a callable taking z or taking nothing.
  Where none exists but CUDA graphs work, the session captures G(z) itself with torch.cuda.graph.

Edit the two tables below (names only) if the fused path declares its capabilities under other names.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import torch

CAPABILITY_ATTR = ("fastlora", "FEATURES")
GENERATOR_GRAPH_APIS: Tuple[Tuple[str, str], ...] = (
    ("colorgan.graphs", "capture_generator"),
    ("colorgan.generate", "capture_generator"),
    ("colorgan.generator", "Generator.capture_graph"),
    ("colorgan.generator", "Generator.cuda_graph"),
)


@dataclass(frozen=True)
class Feature:
    """One capability: whether it is there, and where it was found or why it is missing."""

    name: str
    available: bool
    how: str
    call: Optional[Callable[..., Any]] = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict:
        return {"available": self.available, "how": self.how}


def declared_capabilities() -> Tuple[str, ...]:
    """The capability names the fused path declares (empty when it declares none)."""
    module, attr = CAPABILITY_ATTR
    try:
        caps = getattr(importlib.import_module(module), attr, ())
    except ImportError:
        return ()
    if callable(caps):
        caps = caps()
    return tuple(sorted(str(c) for c in (caps.keys() if isinstance(caps, dict) else caps)))


def _lookup(module: str, path: str) -> Optional[Any]:
    try:
        obj: Any = importlib.import_module(module)
    except ImportError:
        return None
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _replayer(made: Any, z: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A zero-argument replay function from whatever the generator-graph API returned."""
    if not callable(made):
        raise TypeError(f"the generator-graph API returned {type(made).__name__}, not something callable")
    try:
        takes_z = any(p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                      for p in inspect.signature(made).parameters.values())
    except (TypeError, ValueError):
        takes_z = True
    return (lambda: made(z)) if takes_z else made


def _generator_graph(cuda_graph: Feature, caps: Tuple[str, ...]) -> Feature:
    for module, path in GENERATOR_GRAPH_APIS:
        obj = _lookup(module, path)
        if obj is None:
            continue
        where = f"{module}.{path}"
        if "." in path:  # a method of the generator class: G.<name>(z)
            name = path.rsplit(".", 1)[1]

            def call(G, z, amp, _name=name):
                return _replayer(getattr(G, _name)(z), z)
        else:
            def call(G, z, amp, _fn=obj):
                return _replayer(_fn(G, z), z)
        if not cuda_graph.available:
            return Feature("generator_graph", False, f"{where} exists, but {cuda_graph.how}")
        return Feature("generator_graph", True, where, call)
    declared = "declared 'cuda_graph' but " if "cuda_graph" in caps else ""
    return Feature("generator_graph", False, f"{declared}no generator-graph API found (looked for "
                   + ", ".join(f"{m}.{p}" for m, p in GENERATOR_GRAPH_APIS) + ")")


def _fused(dev: torch.device) -> Feature:
    from fastlora.backend import triton_interpreting, triton_unavailable_reason

    why = triton_unavailable_reason(torch.empty(0, device=dev))
    if why:
        return Feature("fused", False, why)
    if triton_interpreting():
        return Feature("fused", True, "Triton's interpreter on the CPU (TRITON_INTERPRET=1): code paths, no speed")
    import triton

    return Feature("fused", True, f"Triton {triton.__version__} on {dev.type}")


def _ort_cuda(dev: torch.device) -> Feature:
    try:
        import onnxruntime as ort
    except ImportError:
        return Feature("ort_cuda", False, "onnxruntime is not installed")
    providers = ort.get_available_providers()
    if dev.type != "cuda":
        return Feature("ort_cuda", False, f"no CUDA device (onnxruntime {ort.__version__}: {providers})")
    if "CUDAExecutionProvider" not in providers:
        return Feature("ort_cuda", False, f"onnxruntime {ort.__version__} has no CUDA provider ({providers}; the "
                                          f"'onnxruntime-gpu' package has it)")
    return Feature("ort_cuda", True, f"onnxruntime {ort.__version__}: {providers} (used only if a session keeps it)")


def _module(name: str, module: str, what: str) -> Feature:
    found = importlib.util.find_spec(module) is not None
    return Feature(name, found, what if found else f"{module} is not installed")


@functools.lru_cache(maxsize=None)
def _detect(dev_str: str) -> Dict[str, Feature]:
    from bench import graphs

    dev = torch.device(dev_str)
    caps = declared_capabilities()
    fused = _fused(dev)
    why_graph = graphs.unavailable_reason(dev)
    cuda_graph = Feature("cuda_graph", why_graph is None, why_graph or f"torch {torch.__version__} CUDA graphs")
    if not fused.available:
        channels_last = Feature("channels_last", False, f"no fused path: {fused.how}")
    elif "channels_last" in caps:
        channels_last = Feature("channels_last", True, f"declared in fastlora.FEATURES {list(caps)}")
    else:
        channels_last = Feature("channels_last", False, "the fused path does not declare 'channels_last' in "
                                                       f"fastlora.FEATURES (declared: {list(caps) or 'none'})")
    feats = [
        Feature("cuda", dev.type == "cuda", torch.cuda.get_device_name(dev) if dev.type == "cuda" else "no CUDA"),
        fused, channels_last, cuda_graph, _generator_graph(cuda_graph, caps), _ort_cuda(dev),
        _module("xdist", "xdist", "pytest-xdist: the correctness pass runs in parallel workers"),
        _module("pytest_timeout", "pytest_timeout", "pytest-timeout: a per-test time limit"),
    ]
    return {f.name: f for f in feats}


def detect(dev: torch.device) -> Dict[str, Feature]:
    """Every feature for device `dev` (detected once per process and device)."""
    return _detect(str(dev))


def as_json(features: Dict[str, Feature]) -> Dict[str, dict]:
    return {name: f.to_dict() for name, f in features.items()}
