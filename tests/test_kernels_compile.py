"""Opt-in (FASTLORA_COMPILE_CHECK=1, ~10-20 min on 2 cores): compile for sm_90a (Triton's bundled ptxas, no GPU)
every kernel specialisation the launchers produce for small shapes of every mode, kind, epilogue, task ids,
deterministic and atomic reductions, both weight-gradient paths, forced split-K, fp32, fp32 with TF32 dots and
bf16, and the fused linear forward and backward. The launches are recorded on meta tensors (`kernels.common.record`), so what is
compiled is exactly what a GPU run would launch. Catches front-end and lowering errors the interpreter hides.
Runs in a subprocess because the interpreter flag is fixed at import time."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.environ.get("FASTLORA_COMPILE_CHECK") != "1",
                                                    reason="opt-in: set FASTLORA_COMPILE_CHECK=1")]

SCRIPT = textwrap.dedent('''
    import itertools, os, tempfile
    os.environ["TRITON_INTERPRET"] = "0"
    import torch
    import fastlora
    from fastlora import _triton
    from bench.compile import compile_job, run_job
    from kernels import common, tiles

    M = dict(device="meta")

    def conv_adapter(kind, c_out, c_in, k, dt):
        e = lambda *s: torch.empty(*s, dtype=dt, **M).requires_grad_()
        if kind == "lora":
            return fastlora.LoRA(e(c_in * k * k, 2), e(c_out, 2))
        if kind.startswith("llora"):
            return fastlora.LLoRA(e(c_in, 2), e(c_out, 2), e(2, 2, k * k), act=kind.split("-")[1])
        return fastlora.LeFT.conv(e(c_out, 2), e(2, 2, k * k), e(c_out, 2), e(k * k, 2), e(c_in, 2), e(c_in, 2),
                                  e(k * k, 2), act="inner")

    jobs = {}
    for dt, k, mode, kind, tasks in itertools.product([torch.float32, torch.bfloat16], [1, 3], ["plain", "up", "down"],
                                                      ["lora", "llora-both", "llora-inner", "left"], [False, True]):
        n, c_in, c_out, h = 4, 64, 48, 8
        e = lambda *s: torch.empty(*s, dtype=dt, **M)
        x = e(n, c_in, h, h).contiguous(memory_format=torch.channels_last).requires_grad_()
        w, s = e(c_out, c_in, k, k), e(n, c_in).requires_grad_()
        ad = conv_adapter(kind, c_out, c_in, k, dt)
        oh = 2 * h if mode == "up" else (h // 2 if mode == "down" else h)
        kw = dict(up=mode == "up", down=mode == "down", bias=e(c_out))
        if k == 3:
            kw.update(noise=e(n, 1, oh, oh), activation="lrelu")
        else:
            kw.update(demodulate=False, skip=e(n, c_out, oh, oh))
        adapter = [ad, None] if tasks else ad
        tid = torch.zeros(n, dtype=torch.int64, **M) if tasks else None
        for split, det in ((None, False), (3, True)):
            with common.record(132) as rec, tiles.split_k(split):
                fastlora.set_deterministic(det)
                try:
                    y = _triton.modulated_conv2d(x, w, s, adapter=adapter, task_ids=tid, **kw)
                    params = [x, s] + [t for t in ad.tensors()]
                    torch.autograd.grad(y, params, torch.empty_like(y))
                finally:
                    fastlora.set_deterministic(False)
            for lc in rec:
                job = compile_job(lc)
                jobs.setdefault(job["key"], job)
    for dt, kind, tasks in itertools.product([torch.float32, torch.bfloat16], ["none", "lora", "left"], [False, True]):
        e = lambda *s: torch.empty(*s, dtype=dt, **M).requires_grad_()
        if kind == "lora":
            ad = fastlora.LoRA(e(64, 2), e(48, 2), bias=e(48))
        elif kind == "left":
            ad = fastlora.LeFT.linear(e(48, 2), e(64, 2), e(48, 3), e(64, 3), e(48), e(48))
        else:
            ad = None
        x, w, b = e(6, 64), e(48, 64), e(48)
        with common.record(132) as rec:
            y = _triton.linear(x, w, b, adapter=[ad, None] if tasks else ad,
                               task_ids=torch.zeros(6, dtype=torch.int64, **M) if tasks else None, activation="lrelu")
            torch.autograd.grad(y, [x], torch.empty_like(y))
        for lc in rec:
            job = compile_job(lc)
            jobs.setdefault(job["key"], job)
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 with TF32 dots: operands rounded in `common.mma`
    e = lambda *s: torch.empty(*s, dtype=torch.float32, **M).requires_grad_()
    with common.record(132) as rec:
        x, s = e(4, 64, 8, 8).contiguous(memory_format=torch.channels_last), e(4, 64)
        ad = conv_adapter("llora-both", 48, 64, 3, torch.float32)
        y = _triton.modulated_conv2d(x, e(48, 64, 3, 3), s, adapter=ad, noise=e(4, 1, 8, 8), activation="lrelu")
        torch.autograd.grad(y, [x, s] + list(ad.tensors()), torch.empty_like(y))
        xl = e(6, 64)
        y = _triton.linear(xl, e(48, 64), e(48), adapter=fastlora.LoRA(e(64, 2), e(48, 2)), activation="lrelu")
        torch.autograd.grad(y, [xl], torch.empty_like(y))
    assert any(lc.consts.get("PREC") == "tf32" for lc in rec)
    for lc in rec:
        job = compile_job(lc)
        jobs.setdefault(job["key"], job)
    out = tempfile.mkdtemp()
    for job in jobs.values():
        run_job(job, out)
    print("compiled", len(jobs))
''')


def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=root, env=env, capture_output=True, text=True,
                          timeout=3600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "compiled" in proc.stdout
