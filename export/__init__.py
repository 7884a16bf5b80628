"""Per-task ONNX export: merge a task's adapters into the base and write an ONNX generator."""
