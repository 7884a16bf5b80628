"""CUDA-graph capture of the whole generator forward (`fastlora.capture`, `colorgan generate --cuda-graph`).

Without a GPU: the API refuses cleanly, and the fused forward of a whole generator runs on meta tensors with
its launches recorded (`kernels.common.record`): a meta tensor has no data, so any host synchronisation in the
launch path (`.item()`, a branch on a tensor value, a copy to the host) would raise here, and a tensor made from
host data on the device after the warm-up call (which a capture refuses) fails the test. On a GPU
(`-m gpu`): the captured forward replays with new inputs and matches the eager forward, with torch's sync
debug mode set to error during capture."""
from __future__ import annotations

import pytest
import torch

import fastlora
from colorgan.generator import Generator

CHANNELS = {4: 32, 8: 16, 16: 16}


def _generator(device: str) -> Generator:
    torch.manual_seed(0)
    G = Generator(16, style_dim=32, n_mlp=2, channels=CHANNELS)
    fastlora.add_task(G, "t", fastlora.AdapterConfig(kind="llora", rank=2, act="both"))
    fastlora.set_task(G, "t")
    return G.to(device)


def test_capture_refuses_without_cuda():
    with pytest.raises(RuntimeError, match="CUDA"):
        fastlora.capture(lambda z: z * 2, torch.zeros(2, 3))


def test_generate_cuda_graph_needs_a_cuda_device(tmp_path):
    from colorgan.generate import generate

    with pytest.raises(ValueError, match="cuda_graph needs device cuda"):
        generate(tmp_path / "missing", "base", "0-1", tmp_path / "out", device="cpu", cuda_graph=True)
    from colorgan.cli import main

    assert main(["generate", "--ckpt", str(tmp_path / "missing"), "--seeds", "0", "--outdir", str(tmp_path / "o"),
                 "--cuda-graph"]) == 1  # the CLI says it in its own words (see the next test's options)


def test_cli_has_cuda_graph_option():
    import argparse

    from colorgan.commands import generate as cmd

    ap = argparse.ArgumentParser()
    cmd.register(ap.add_subparsers())
    args = ap.parse_args(["generate", "--ckpt", "c", "--seeds", "0", "--outdir", "o", "--cuda-graph"])
    assert args.cuda_graph is True


def _forbid_host_copies(monkeypatch) -> None:
    """Make a tensor built from host data on a device (a copy that CUDA-graph capture refuses) fail the test."""
    def no_host_copy(make):
        def wrapped(*args, device=None, **kw):
            if device is not None and torch.device(device).type != "cpu":
                raise AssertionError(f"{make.__name__}(..., device={device}) in the launch path")
            return make(*args, device=device, **kw)
        return wrapped

    monkeypatch.setattr(torch, "tensor", no_host_copy(torch.tensor))
    monkeypatch.setattr(torch, "as_tensor", no_host_copy(torch.as_tensor))


def test_torch_path_makes_no_host_copies_after_a_warm_up(monkeypatch):
    """`--backend auto` (the PyTorch path) is what `colorgan generate --cuda-graph` captures by default."""
    G = _generator("meta")
    z = torch.empty(4, 32, device="meta")
    with torch.inference_mode():
        G(z, backend="torch")
        _forbid_host_copies(monkeypatch)
        img = G(z, backend="torch")
    assert img.shape == (4, 3, 16, 16)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the meta-tensor recording runs without a GPU")
def test_whole_generator_launch_path_has_no_host_sync(monkeypatch):
    from kernels import common

    G = _generator("meta")
    z = torch.empty(4, 32, device="meta")
    with torch.inference_mode(), common.record(132):
        G(z, backend="triton")  # the warm-up a capture runs first

    _forbid_host_copies(monkeypatch)
    with torch.inference_mode(), common.record(132) as launches:
        img = G(z, backend="triton")
    assert img.shape == (4, 3, 16, 16) and img.device.type == "meta"
    roles = [lc.tag for lc in launches]
    # every modulated conv (5 styled convs + 3 ToRGB) and every mapping/style linear launched fused
    assert roles.count("conv") == 8 and roles.count("blur") == 2 and roles.count("linear") == 2 + 8, roles
    assert img.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_captured_generator_matches_eager(backend):
    G = _generator("cuda")
    z = torch.randn(4, 32, device="cuda")

    def forward(zz):
        return G(zz, backend=backend)

    with torch.inference_mode():
        eager = forward(z).clone()
        torch.cuda.set_sync_debug_mode("error")
        try:
            graph = fastlora.capture(forward, torch.zeros_like(z))
        finally:
            torch.cuda.set_sync_debug_mode(0)
        out = graph(z).clone()
        z2 = torch.randn_like(z)
        out2 = graph(z2).clone()
        ref2 = forward(z2)
    assert torch.allclose(out, eager, atol=1e-5, rtol=1e-4)
    assert torch.allclose(out2, ref2, atol=1e-5, rtol=1e-4) and not torch.allclose(out, out2)
