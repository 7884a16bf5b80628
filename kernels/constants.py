"""The numeric constants and integer codes shared by the kernels and the reference ops (one home).

Plain Python (no triton import): `fastlora.functional` reads them too, on machines without Triton."""

DEMOD_EPS = 1e-8  # d = rsqrt(Σ (s·Ŵ)² + DEMOD_EPS)
SQRT2 = 1.4142135623730951  # the leaky-ReLU gain of StyleGAN2
LRELU_SLOPE = 0.2

# conv modes: stride 1 / padding k//2; stride 2 after the down blur; stride-2 transposed conv (then the up blur)
MODE_PLAIN, MODE_DOWN, MODE_UP = 0, 1, 2
# adapter kinds of the weight prologue (the factor tensors' meaning depends on the kind)
KIND_NONE, KIND_LORA, KIND_LLORA, KIND_LEFT = 0, 1, 2, 3
