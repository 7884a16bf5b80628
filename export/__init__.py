"""Per-task ONNX export: merge a task's adapters into the base and write a plain StyleGAN2 generator.

API: `export_checkpoint(ckpt, task, out, ...)` (a checkpoint folder; task a name, "base", "all"
or a comma list), `export_task(ckpt, task, file)` (one file, result as a dict),
`export_generator(G, task, path, ...)` (an in-memory generator), `ExportGenerator` (the
export-only torch module), `make_session` (onnxruntime with an honest provider check) and
`render_onnx` (seeds → PNGs from an exported file, no PyTorch model). onnx and onnxruntime
are imported only when a function needs them.
"""
from export.api import (DEFAULT_OPSET, TOLERANCES, ExportError, ExportResult, Tolerance, export_checkpoint,
                        export_generator, export_task, make_session, run_session, to_fp16)
from export.graph import ExportGenerator, reference_forward, task_center
from export.render import render_onnx, run_seeds

__all__ = ["DEFAULT_OPSET", "TOLERANCES", "ExportError", "ExportGenerator", "ExportResult", "Tolerance",
           "export_checkpoint", "export_generator", "export_task", "make_session", "reference_forward",
           "render_onnx", "run_seeds", "run_session", "task_center", "to_fp16"]
