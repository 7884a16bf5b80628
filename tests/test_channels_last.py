"""Channels-last activations: the reference backend and the models accept both memory formats and give the
same numbers (the fused backend's own checks, with channels-last inputs and outputs, are in
tests/test_kernels_forward.py)."""
from __future__ import annotations

import pytest
import torch

from colorgan.discriminator import Discriminator
from fastlora import functional as FL

CL = torch.channels_last


@pytest.mark.parametrize("mode", ["plain", "up", "down"])
def test_reference_modconv_accepts_both_formats(mode):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 6, 6, generator=g, dtype=torch.float64)
    w = torch.randn(5, 8, 3, 3, generator=g, dtype=torch.float64)
    s = torch.randn(3, 8, generator=g, dtype=torch.float64) + 1
    oh = {"plain": 6, "up": 12, "down": 3}[mode]
    kw = dict(up=mode == "up", down=mode == "down", bias=torch.randn(5, generator=g, dtype=torch.float64),
              noise=torch.randn(3, 1, oh, oh, generator=g, dtype=torch.float64), activation="lrelu",
              scale=0.1, backend="torch")
    a = FL.modulated_conv2d(x, w, s, **kw)
    b = FL.modulated_conv2d(x.contiguous(memory_format=CL), w, s, **kw)
    assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_discriminator_accepts_both_formats():
    torch.manual_seed(0)
    D = Discriminator(16, channels={4: 16, 8: 16, 16: 8}).double()
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    assert torch.allclose(D(x), D(x.contiguous(memory_format=CL)), rtol=1e-10, atol=1e-12)
