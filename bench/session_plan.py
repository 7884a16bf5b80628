"""What the one-command GPU session measures, in which order, with which share of the budget, and how long
that should take.

Two plans: `GPU` (an H200 in 480 s) and `DRY` (the same steps on tiny shapes on the CPU, through the
reference paths and Triton's interpreter). The layer cases are ordered by priority: when the layer step's
time runs out, the cases at the end (rank 8, act both) are the ones left out, and the record says so.

The time estimate (`estimate`) is counts times unit costs. Unit costs are assumptions (`ASSUMED`, with
where each comes from) until a session on the same device has run: then the newest such session's
measured rates replace them (`calibration`).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

STEPS = ("env", "tests", "warmup", "layers", "e2e", "onnx")

# Share of the budget per step (the rest is margin). Deadlines are cumulative: time a step leaves unused
# passes to the next one; a step that overruns its deadline stops at its next check.
SHARES = {"env": 15 / 480, "tests": 120 / 480, "warmup": 75 / 480, "layers": 150 / 480, "e2e": 50 / 480,
          "onnx": 40 / 480}
MARGIN = 1.0 - sum(SHARES.values())

LAYER_METHODS = ("merged", "peft", "published", "shared", "ours-heuristic", "ours-graph")
E2E_METHODS = ("ours", "ours-graph", "published")

# Patterns over pytest node ids (`*` is the only wildcard), in the order they run (forward, backward, generator, extras).
# Each must name a test marked `gpu`; the "*channels*last*" patterns pick up channels-last tests where
# the fused path has them.
PRECS = ("fp32", "tf32", "bf16")
_FWD, _BWD = "tests/test_kernels_gpu.py::", "tests/test_kernels_backward_gpu.py::"
GPU_TESTS: Tuple[str, ...] = tuple(
    [f"{_FWD}test_gpu_modconv[llora-both-*-{p}]" for p in PRECS]
    + [f"{_FWD}test_gpu_modconv[lora-3-*-{p}]" for p in PRECS]
    + [f"{_FWD}test_gpu_modconv[left-inner-3-plain-{p}]" for p in PRECS]
    + [f"{_FWD}test_gpu_task_ids[*-{p}]" for p in PRECS]
    + [f"{_FWD}test_gpu_linear[{p}]" for p in PRECS]
    + [f"{_FWD}test_gpu_cuda_graph_capture", f"{_FWD}test_gpu_tf32_operands_rounded",
       f"{_FWD}test_gpu_split_k[2-bf16]", f"{_FWD}test_gpu_split_k[7-fp32]", f"{_FWD}test_gpu_heuristic_ladder[bf16]",
       "tests/test_cuda_graph.py::test_captured_generator_matches_eager[*]"]
    + [f"{_BWD}test_gpu_modconv_backward[llora-both-*-{p}]" for p in PRECS]
    + [f"{_BWD}test_gpu_factorised_backward[llora-inner-3-*-{p}]" for p in PRECS]
    + [f"{_BWD}test_gpu_factorised_backward[lora-3-plain-{p}]" for p in PRECS]
    + [f"{_BWD}test_gpu_backward_task_ids[*-{p}]" for p in PRECS]
    + [f"{_BWD}test_gpu_linear_backward[{p}]" for p in PRECS]
    + [f"{_BWD}test_gpu_deterministic_bitwise", f"{_BWD}test_gpu_factorised_deterministic_bitwise"]
    + ["tests/test_generator_gpu.py::*"]
    + ["*channels_last*", "*channels-last*", "*nhwc*"])
# Interpreter tests the dry run adds, so that the recording of passed tests is exercised too.
DRY_TESTS: Tuple[str, ...] = ("tests/test_kernels_forward.py::test_noise_broadcast[shape0]",
                              "tests/test_kernels_forward.py::test_split_k_heuristic_fills_the_gpu")


@dataclass(frozen=True)
class Plan:
    """Everything the session measures. `layer_order` lists (rank, act) pairs by priority."""

    name: str
    ladder: str
    layers: Optional[Tuple[str, ...]]
    batches: Tuple[int, ...]
    layer_order: Tuple[Tuple[int, str], ...]
    dtypes: Tuple[str, ...]
    modes: Tuple[str, ...]
    layer_methods: Tuple[str, ...]
    layer_timing: Dict[str, float]
    cpu_reps: int
    cpu_warmup: int
    e2e_size: int
    e2e_quick: bool
    e2e_gen_batch: int
    e2e_train_batch: int
    e2e_rank: int
    e2e_act: str
    e2e_iters: int
    e2e_warmup: int
    onnx_size: int
    onnx_quick: bool
    onnx_batches: Tuple[int, ...]
    onnx_cpu_batches: Tuple[int, ...]
    onnx_iters: int
    onnx_warmup: int
    tests: Tuple[str, ...]
    tests_marker: Optional[str]
    tests_extra: Tuple[str, ...]
    test_workers: int
    test_timeout_s: int
    warmup_workers: int
    warmup_second_call: bool
    notes: Tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        return asdict(self)


GPU = Plan(
    name="gpu", ladder="256", layers=None, batches=(16, 4),
    layer_order=((1, "inner"), (1, "both"), (8, "inner"), (8, "both")),
    dtypes=("bf16",), modes=("forward", "fwd+bwd"), layer_methods=LAYER_METHODS,
    layer_timing={"warmup_ms": 5.0, "rep_ms": 20.0}, cpu_reps=1, cpu_warmup=0,
    e2e_size=256, e2e_quick=False, e2e_gen_batch=16, e2e_train_batch=4, e2e_rank=1, e2e_act="inner",
    e2e_iters=5, e2e_warmup=2,
    onnx_size=256, onnx_quick=False, onnx_batches=(1, 16), onnx_cpu_batches=(1,), onnx_iters=10, onnx_warmup=3,
    tests=GPU_TESTS, tests_marker="gpu", tests_extra=(), test_workers=12, test_timeout_s=110,
    warmup_workers=12, warmup_second_call=True,
    notes=("methods: ours-heuristic is the fused path as `colorgan train` runs it (tile heuristic; autotuning "
           "is off by default and would benchmark every tile per shape); torch.compile variants are left out "
           "(about a minute of compilation per case); the bare-conv floor is left out (merged is the floor "
           "with modulation and epilogue)",
           "e2e: the 256 px generator with one CoLoR-GAN task (LLoRA rank 1, act inner), bf16 autocast; "
           "generation at batch 16, one training iteration (D + G + EMA, no lazy regularisers) at batch 4",
           "onnx: the same 256 px generator and task exported in fp32; onnxruntime on the CPU at batch 1 only "
           "(seconds per image at 256 px)"))

DRY = Plan(
    name="dry", ladder="quick", layers=("conv16@4", "torgb16@8"), batches=(2,),
    layer_order=((2, "inner"), (2, "both")),
    dtypes=("fp32",), modes=("forward", "fwd+bwd"), layer_methods=LAYER_METHODS,
    layer_timing={}, cpu_reps=1, cpu_warmup=0,
    e2e_size=32, e2e_quick=True, e2e_gen_batch=2, e2e_train_batch=2, e2e_rank=1, e2e_act="inner",
    e2e_iters=1, e2e_warmup=0,
    onnx_size=16, onnx_quick=True, onnx_batches=(1, 2), onnx_cpu_batches=(1, 2), onnx_iters=1, onnx_warmup=0,
    tests=GPU_TESTS, tests_marker="gpu", tests_extra=DRY_TESTS, test_workers=1, test_timeout_s=60,
    warmup_workers=1, warmup_second_call=False,
    notes=("dry run: tiny shapes on the CPU; the fused path runs in Triton's interpreter (no timing meaning); "
           "GPU tests are collected and recorded as skipped",))


@dataclass(frozen=True)
class LayerCase:
    layer: str
    batch: int
    rank: int
    act: str
    dtype: str


def layer_cases(plan: Plan) -> List[LayerCase]:
    """The layer matrix in priority order: (rank, act) pairs, then batch, then the ladder's layer order."""
    from bench.cases import ladder

    names = [c.name for c in ladder(plan.ladder, plan.layers)]
    return [LayerCase(n, b, r, a, d) for r, a in plan.layer_order for b in plan.batches for d in plan.dtypes
            for n in names]


def measurements(plan: Plan, case: LayerCase) -> int:
    """Timed measurements of one case: every method in every mode, less peft at act 'both' (no bypass form)
    and ours-graph outside forward mode."""
    n = 0
    for m in plan.layer_methods:
        for mode in plan.modes:
            if (m == "peft" and case.act == "both") or (m == "ours-graph" and mode != "forward"):
                continue
            n += 1
    return n


# Unit costs assumed before any session has run on the device (seconds).
ASSUMED = {
    "kernels": 100,
    "compile_s_per_kernel": 6.0,
    "worker_start_s": 12.0,
    "test_compile_kernels": 130,
    "test_s_per_kernel": 3.0,
    "tests_start_s": 20.0,
    "layer_s_per_case": 0.25,
    "layer_s_per_measurement": 0.07,
    "e2e_s_per_job": 7.0,
    "e2e_setup_s": 10.0,
    "onnx_export_s": 20.0,
    "onnx_s_per_row": 1.5,
    "env_s": 10.0,
}
ASSUMED_SOURCE = {
    "kernels": "Triton specialisations the layer matrix and the 256 px generator (forward and backward, batch 4 "
               "and 16) need: ~60 for the layers (modconv per layer kind, tile and grad/no-grad variant; "
               "prologue per act and rank; FIR; epilogue-backward, dgrad, wgrad, the factorised rank-r launches) "
               "+ ~40 for the generator (linear layers, batch-4 tiles); an estimate until a session counts them",
    "compile_s_per_kernel": "offline sm_90 compiles here (Triton 3.7.1, 2-core AMD EPYC): 1-3 s for small tiles, "
                            "8-9 s for 128x64 forward tiles, 16 s for 128x64 dgrad; the H200 host is assumed "
                            "no faster per core",
    "worker_start_s": "python + torch import + CUDA context per warm-up worker (parallel)",
    "test_compile_kernels": "specialisations at the test shapes (C 72/96, 16x13 px) over the selected tests",
    "test_s_per_kernel": "small tiles at test shapes: 1-3 s each (offline compiles here)",
    "tests_start_s": "pytest start, collection of tests/ and xdist workers",
    "layer_s_per_case": "inputs drawn on the GPU, float64 reference forward + backward, input-set copies",
    "layer_s_per_measurement": "CUDA events: >=8 warm-up calls + 5 probes + reps filling 20 ms (>=10), peak "
                               "memory call, correctness call; 0.3 ms host time per torch-path call",
    "e2e_s_per_job": "model copies, 2 warm-up + 5 timed iterations (training) or CUDA-event reps (generation)",
    "e2e_setup_s": "256 px G and D built on the CPU, float64 reference images",
    "onnx_export_s": "torch.onnx export of the 256 px generator, checker, onnxruntime parity at batch 1 and 2",
    "onnx_s_per_row": "one images/s row: warm-up + 10 timed runs",
    "env_s": "imports, CUDA init, 8192^3 matmuls in bf16/tf32/fp32, 1 GiB copy",
}


def calibration(results_dir: Path, device_slug: str) -> Tuple[Dict[str, float], str]:
    """Unit costs measured by the newest session of this device under `results_dir` (falling back to
    ASSUMED for each missing one), and where they came from."""
    units = dict(ASSUMED)
    sessions = sorted((p for p in Path(results_dir).glob(f"{device_slug}-*") if (p / "env.json").is_file()),
                      key=lambda p: p.name)
    for folder in reversed(sessions):
        found = {}
        for step in ("warmup", "layers", "tests", "e2e", "onnx"):
            f = folder / f"{step}.json"
            if f.is_file():
                try:
                    found.update(json.loads(f.read_text()).get("rates") or {})
                except (OSError, ValueError):
                    continue
        found = {k: float(v) for k, v in found.items() if k in units and isinstance(v, (int, float))}
        if found:
            units.update(found)
            return units, f"measured by {folder.name} ({', '.join(sorted(found))}); the rest assumed"
    return units, "assumed (no earlier session of this device)"


def estimate(plan: Plan, units: Dict[str, float], workers: Optional[int] = None,
             test_workers: Optional[int] = None) -> dict:
    """Seconds per step: counts x unit costs (see ASSUMED_SOURCE for what each unit covers)."""
    w = max(1, workers or plan.warmup_workers)
    tw = max(1, test_workers or plan.test_workers)
    cases = layer_cases(plan)
    n_meas = sum(measurements(plan, c) for c in cases)
    e2e_jobs = 2 * len(E2E_METHODS) - 1  # generation: every method; training: all but the graph
    onnx_rows = 4 * len(plan.onnx_batches) + len(plan.onnx_cpu_batches)  # torch x3 + ort-cuda; ort-cpu
    steps = {
        "env": units["env_s"],
        "tests": units["tests_start_s"] + units["test_compile_kernels"] * units["test_s_per_kernel"] / tw,
        "warmup": units["worker_start_s"] + math.ceil(units["kernels"] / w) * units["compile_s_per_kernel"],
        "layers": len(cases) * units["layer_s_per_case"] + n_meas * units["layer_s_per_measurement"],
        "e2e": units["e2e_setup_s"] + e2e_jobs * units["e2e_s_per_job"],
        "onnx": units["onnx_export_s"] + onnx_rows * units["onnx_s_per_row"],
    }
    return {"steps_s": {k: round(v, 1) for k, v in steps.items()}, "total_s": round(sum(steps.values()), 1),
            "counts": {"layer_cases": len(cases), "layer_measurements": n_meas, "kernels": units["kernels"],
                       "compile_workers": w, "test_kernels": units["test_compile_kernels"], "test_workers": tw,
                       "e2e_jobs": e2e_jobs, "onnx_rows": onnx_rows},
            "units": units,
            "formula": "env + tests (start + test kernels x s/kernel / test workers) + warm-up (worker start + "
                       "ceil(kernels / workers) x compile s/kernel) + layers (cases x s/case + measurements x "
                       "s/measurement) + e2e (setup + jobs x s/job) + onnx (export + rows x s/row)"}


def deadlines(budget_s: float, steps: Sequence[str]) -> Dict[str, float]:
    """Seconds from the session start by which each selected step must end (cumulative shares,
    renormalised over the selected steps so that the margin stays the same fraction)."""
    total = sum(SHARES[s] for s in steps)
    out, acc = {}, 0.0
    for s in steps:
        acc += SHARES[s] / total * (1.0 - MARGIN)
        out[s] = acc * budget_s
    return out
