"""Benchmarks of the fused kernels against unfused LoRA and the other baselines."""
