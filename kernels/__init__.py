"""Triton kernels and their launchers (the fused modulated conv + low-rank adapter).

Only `fastlora` imports this package; it imports `triton` at module import, so it is
loaded lazily and only where a Triton backend is used.
"""
