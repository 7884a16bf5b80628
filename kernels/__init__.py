"""Triton kernels and their launchers (the fused modulated conv + low-rank adapter, the fused linear).

A leaf package: launchers take plain tensors and integer codes and import nothing of the project. Only
`kernels.constants` is plain Python; every other module imports `triton`, so `fastlora` loads them lazily,
only where a Triton backend is used.
"""
