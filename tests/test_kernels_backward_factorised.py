"""Factorised weight gradient of the fused modulated-conv backward (frozen base; LoRA and LLoRA act inner/none):
rank-r reductions instead of the full kernel gradient G. Same references and tolerances as
`tests/test_kernels_backward.py` (float64 torch reference, relative L2 < 1e-5, or 4× the fp32 torch error for
ill-conditioned reductions, always < 1e-4), NaN-poisoned launcher buffers; `kernels.tiles.COUNTERS` proves which
path ran and that the full-G wgrad kernel never launched. The matrix is pruned pairwise like the full-G one."""
from __future__ import annotations

import itertools

import pytest
import torch

import fastlora
from tests.test_kernels_backward import check_modconv_grads, modconv_grads
from tests.test_kernels_forward import BATCHES, CHANNELS, EPILOGUES, RANKS, conv_adapter

FKINDS = ("llora-inner", "llora-none", "lora")


@pytest.fixture(autouse=True)
def _poisoned():
    from kernels import tiles

    with tiles.poison():
        yield


def _assert_factorised(runs: int = 1) -> None:
    from kernels import tiles

    assert tiles.COUNTERS.get("wgrad_factorised", 0) == runs, tiles.COUNTERS
    assert "wgrad_full" not in tiles.COUNTERS and "wgrad_full_kernel" not in tiles.COUNTERS, tiles.COUNTERS


CASES = list(itertools.product((1, 3), ("plain", "up", "down"), FKINDS))


@pytest.mark.parametrize("i,k,mode,kind", [(i, *c) for i, c in enumerate(CASES)],
                         ids=[f"k{k}-{m}-{kd}" for k, m, kd in CASES])
def test_factorised_matrix(kernel_device, i, k, mode, kind):
    """auto picks the factorised path for a frozen base; gradients match the float64 reference."""
    from kernels import tiles

    r, n = RANKS[i % 4], BATCHES[(i // 2) % 3]
    c_in, c_out = CHANNELS[(i + 1) % 3]
    h, w = ((5, 7), (4, 3), (9, 6))[(i // 3) % 3]
    g = torch.Generator().manual_seed(500 + i)
    adapter = conv_adapter(kind, c_out, c_in, k, r, "cpu", g)
    tiles.COUNTERS.clear()
    check_modconv_grads(kernel_device, n, c_in, c_out, h, w, k, mode, adapter, epi=EPILOGUES[i % 4], seed=i,
                        weight_grad=False)
    _assert_factorised()


@pytest.mark.parametrize("k,mode", list(itertools.product((1, 3), ("plain", "up", "down"))))
def test_factorised_task_ids(kernel_device, k, mode):
    """Mixed LLoRA/LoRA tasks of different ranks, a base task and a task without samples."""
    from kernels import tiles

    n, c_in, c_out = 4, 20, 18
    g = torch.Generator().manual_seed(31)
    adapters = [conv_adapter("llora-inner", c_out, c_in, k, 2, "cpu", g), None,
                conv_adapter("lora", c_out, c_in, k, 1, "cpu", g),
                conv_adapter("llora-none", c_out, c_in, k, 4, "cpu", g),
                conv_adapter("lora", c_out, c_in, k, 8, "cpu", g)]  # task 4: no sample (zero gradient)
    i32 = mode == "up"
    tid = torch.tensor([3, 0, 0, 2], dtype=torch.int32 if i32 else torch.int64)
    tiles.COUNTERS.clear()
    check_modconv_grads(kernel_device, n, c_in, c_out, 5, 6, k, mode, adapters, task_ids=tid,
                        epi="torgb" if k == 1 and mode == "down" else "styled", seed=7, weight_grad=False)
    _assert_factorised()


def _names(family):
    from kernels import tiles

    return [c.name for c in tiles.TABLES[family]]


@pytest.mark.parametrize("j,name", list(enumerate(_names("factor"))))
def test_every_factor_config(kernel_device, j, name):
    from kernels import tiles

    k = 1 if name.endswith("_k1") else 3
    mode = ("plain", "up", "down")[j % 3]
    g = torch.Generator().manual_seed(40 + j)
    adapters = [conv_adapter("llora-inner", 18, 37, k, 3, "cpu", g), conv_adapter("lora", 18, 37, k, 2, "cpu", g)]
    tiles.COUNTERS.clear()
    with tiles.force(factor=name), tiles.wgrad_path("factorised"):
        check_modconv_grads(kernel_device, 3, 37, 18, 7, 5, k, mode, adapters, task_ids=torch.tensor([1, 0, 1]),
                            epi="styled", seed=5, weight_grad=False)
    _assert_factorised()


@pytest.mark.parametrize("name", _names("reduce"))
@pytest.mark.parametrize("kind", ["llora-none", "lora"])
def test_every_demod_reduce_config(kernel_device, name, kind):
    from kernels import tiles

    g = torch.Generator().manual_seed(12)
    adapter = conv_adapter(kind, 70, 37, 3, 3, "cpu", g)  # C_out 70 > 64: several C_out blocks
    tiles.COUNTERS.clear()
    with tiles.force(reduce=name):
        check_modconv_grads(kernel_device, 1, 37, 70, 5, 4, 3, "plain", adapter, epi="styled", seed=6,
                            weight_grad=False)
    _assert_factorised()
    assert tiles.COUNTERS.get("demod_factor_atomic", 0) == 1


def test_path_selection(kernel_device, monkeypatch):
    """auto: full G with a trainable base, act both or LeFT; forcing; the env variable; bad values."""
    from kernels import tiles

    g = torch.Generator().manual_seed(3)
    low = conv_adapter("llora-inner", 6, 5, 3, 2, "cpu", g)
    args = (kernel_device, 2, 5, 6, 4, 3, 3, "plain")
    for adapter, wg, path in [(low, True, "full"), (conv_adapter("llora-both", 6, 5, 3, 2, "cpu", g), False, "full"),
                              (conv_adapter("left-inner", 6, 5, 3, 2, "cpu", g), False, "full"),
                              ([low, conv_adapter("llora-both", 6, 5, 3, 2, "cpu", g)], False, "full"),
                              (low, False, "factorised")]:
        tiles.COUNTERS.clear()
        kw = dict(task_ids=torch.tensor([0, 1])) if isinstance(adapter, list) else {}
        check_modconv_grads(*args, adapter, weight_grad=wg, **kw)
        assert tiles.COUNTERS.get(f"wgrad_{path}", 0) == 1, (path, tiles.COUNTERS)
    tiles.COUNTERS.clear()
    with tiles.wgrad_path("full"):
        check_modconv_grads(*args, low, weight_grad=False)
    assert tiles.COUNTERS.get("wgrad_full", 0) == 1 and "wgrad_factorised" not in tiles.COUNTERS
    monkeypatch.setenv("FASTLORA_WGRAD", "full")
    tiles.COUNTERS.clear()
    modconv_grads(*args, low, weight_grad=False)
    assert tiles.COUNTERS.get("wgrad_full", 0) == 1
    with tiles.wgrad_path("auto"):  # the context manager overrides the env variable
        tiles.COUNTERS.clear()
        modconv_grads(*args, low, weight_grad=False)
        _assert_factorised()
    monkeypatch.setenv("FASTLORA_WGRAD", "sideways")
    with pytest.raises(ValueError, match="FASTLORA_WGRAD"):
        modconv_grads(*args, low, weight_grad=False)
    monkeypatch.delenv("FASTLORA_WGRAD")
    with pytest.raises(ValueError, match="wgrad path"), tiles.wgrad_path("sideways"):
        pass
    with tiles.wgrad_path("factorised"), pytest.raises(ValueError, match="factorised"):
        modconv_grads(*args, low, weight_grad=True)


def test_factorised_deterministic(kernel_device):
    from kernels import tiles

    g = torch.Generator().manual_seed(8)
    adapters = [conv_adapter("llora-none", 18, 20, 3, 2, "cpu", g), conv_adapter("lora", 18, 20, 3, 4, "cpu", g)]
    fastlora.set_deterministic(True)
    try:
        tiles.COUNTERS.clear()
        runs = [modconv_grads(kernel_device, 3, 20, 18, 5, 4, 3, "down", adapters, task_ids=torch.tensor([1, 0, 1]),
                              epi="styled", seed=9, weight_grad=False)[0] for _ in range(2)]
        _assert_factorised(2)
        assert tiles.COUNTERS.get("demod_factor_partials", 0) == 4
        assert not any(key.endswith("_atomic") for key in tiles.COUNTERS), tiles.COUNTERS
        for a, b in zip(*runs):
            assert torch.equal(a, b)
    finally:
        fastlora.set_deterministic(False)
    tiles.COUNTERS.clear()
    check_modconv_grads(kernel_device, 3, 20, 18, 5, 4, 3, "down", adapters, task_ids=torch.tensor([1, 0, 1]),
                        epi="styled", seed=9, weight_grad=False)
    assert tiles.COUNTERS.get("demod_factor_atomic", 0) == 2 and "demod_factor_partials" not in tiles.COUNTERS
