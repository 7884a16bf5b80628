"""Opt-in (FASTLORA_COMPILE_CHECK=1, ~5-15 min on 2 cores): compile kernel specialisations for sm_90
(TTIR → PTX → cubin with Triton's bundled ptxas) without a GPU. Catches front-end and lowering errors
the interpreter hides (e.g. tensor/constexpr operator forms, dot shapes). Runs in a subprocess because
the interpreter flag is fixed at import time."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.environ.get("FASTLORA_COMPILE_CHECK") != "1",
                                                    reason="opt-in: set FASTLORA_COMPILE_CHECK=1")]

SCRIPT = textwrap.dedent('''
    import itertools, os
    os.environ["TRITON_INTERPRET"] = "0"
    import triton
    from triton.compiler import ASTSource
    from triton.backends.compiler import GPUTarget
    from kernels import backward_conv, backward_linear, fir, linear, modconv, prologue, tiles

    TARGET = GPUTarget("cuda", 90, 32)

    def build(fn, types, consts, warps, stages):
        names = fn.arg_names
        sig = {n: ("constexpr" if n in consts else types[n]) for n in names}
        src = ASTSource(fn, sig, constexprs={(names.index(k),): v for k, v in consts.items()})
        triton.compile(src, target=TARGET, options={"num_warps": warps, "num_stages": stages})

    P = lambda dt: "*" + dt
    n = 0
    for dt, mode, k, cfg in itertools.product(["fp32", "bf16"], [0, 1, 2], [1, 3], tiles.CONV_CONFIGS):
        if k == 3 and cfg.num_warps > 4:
            continue
        if dt == "bf16" and cfg.name != "conv_32x64x32":
            continue
        for tasks, demod, epi in ([(False, True, 0), (True, True, 1), (False, False, 2)]
                                  if cfg.name == "conv_128x64x32" else [(False, True, 0)]):
            types = dict(x_ptr=P("fp32" if mode == 1 else dt), s_ptr=P(dt), w_ptr=P(dt), sq_ptr="*fp32",
                         tid_ptr="*i64", out_ptr=P("fp32" if mode == 2 else dt), noise_ptr=P(dt), bias_ptr=P(dt),
                         skip_ptr=P(dt), pre_ptr="*fp32", **{a: "i32" for a in "C_IN C_OUT H W OH OW QH QW sn_b sn_c sn_y sn_x".split()})
            consts = dict(K=k, MODE=mode, PHASES=4 if mode == 2 else 1, TASKS=tasks, DEMOD=demod,
                          HAS_NOISE=epi == 1, HAS_BIAS=epi > 0, LRELU=epi == 1, HAS_SKIP=epi == 2,
                          SAVE_PRE=epi == 1, PREC="ieee" if dt == "fp32" else "tf32", BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                          BLOCK_K=cfg.block_k)
            build(modconv._modconv_kernel, types, consts, cfg.num_warps, cfg.num_stages); n += 1
    for kind, ai, ao in [(0, 0, 0), (1, 0, 0), (2, 1, 1), (2, 1, 0), (2, 0, 0), (3, 1, 0), (3, 0, 0)]:
        types = dict(w_ptr="*fp32", w_out_ptr="*bf16", sq_out_ptr="*fp32", **{f"f{i}": "*fp32" for i in range(7)},
                     C_OUT="i32", C_IN="i32", R="i32", scale="fp32", alpha="fp32")
        consts = dict(KK=9, KIND=kind, ACT_IN=bool(ai), ACT_OUT=bool(ao), BLOCK_O=32, BLOCK_C=32, R_PAD=8)
        build(prologue._prologue_kernel, types, consts, 4, 1); n += 1
    for cfg, flags in zip(tiles.FIR_CONFIGS, [(0, 0, 0, 0), (1, 1, 1, 1)]):
        types = dict(x_ptr="*fp32", out_ptr="*bf16", noise_ptr="*fp32", bias_ptr="*fp32", skip_ptr="*fp32",
                     pre_ptr="*fp32", gain="fp32", **{a: "i32" for a in "TOTAL C H W OH OW PAD_Y PAD_X sn_b sn_c sn_y sn_x".split()})
        consts = dict(HAS_NOISE=bool(flags[0]), HAS_BIAS=bool(flags[1]), LRELU=bool(flags[2]),
                      HAS_SKIP=bool(flags[3]), SAVE_PRE=bool(flags[0]), BLOCK=cfg.block_m)
        build(fir._fir_kernel, types, consts, cfg.num_warps, 1); n += 1
    for cfg, tasks, dt in itertools.product(tiles.LINEAR_CONFIGS, [False, True], ["fp32", "bf16"]):
        types = dict(x_ptr=P(dt), w_ptr=P(dt), ui_ptr="*fp32", uo_ptr="*fp32", ai_ptr="*fp32", ao_ptr="*fp32",
                     b_ptr=P(dt), tid_ptr="*i64", out_ptr=P(dt), scale="fp32", alpha="fp32", bias_scale="fp32",
                     **{a: "i32" for a in "N D_IN D_OUT R1 R2 st_ui st_uo st_ai st_ao st_b".split()})
        consts = dict(TASKS=tasks, MUL=True, LOW=True, HAS_BIAS=True, LRELU=True,
                      PREC="ieee" if dt == "fp32" else "tf32", R1P=16, R2P=16, BLOCK_M=cfg.block_m,
                      BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k)
        build(linear._linear_kernel, types, consts, cfg.num_warps, cfg.num_stages); n += 1
    # backward kernels
    for flags in [(1, 1, 1, 1, 1), (0, 0, 0, 0, 0)]:
        types = dict(gy_ptr="*bf16", pre_ptr="*fp32", noise_ptr="*bf16", bias_ptr="*bf16", d_ptr="*fp32",
                     gd_ptr="*fp32", gz_ptr="*fp32", sums_ptr="*fp32",
                     **{a: "i32" for a in "C HW OW sn_b sn_c sn_y sn_x".split()})
        consts = dict(HAS_NOISE=bool(flags[0]), HAS_BIAS=bool(flags[1]), LRELU=bool(flags[2]), DEMOD=bool(flags[3]),
                      STORE_GZ=bool(flags[4]), BLOCK=1024)
        build(backward_conv._epi_bwd_kernel, types, consts, 4, 1); n += 1
    for dt, mode, k, cfg in itertools.product(["fp32", "bf16"], [0, 1, 2], [1, 3], tiles.CONV_CONFIGS):
        if (k == 3 and cfg.num_warps > 4) or (dt == "bf16" and cfg.name != "conv_32x64x32"):
            continue
        for tasks, atomic in ([(False, True), (True, False)] if cfg.name == "conv_64x64x32" else [(False, True)]):
            types = dict(g_ptr="*fp32", w_ptr=P(dt), x_ptr=P("fp32" if mode == 1 else dt), s_ptr=P(dt),
                         sq_ptr="*fp32", e_ptr="*fp32", tid_ptr="*i64", dx_ptr="*fp32", ds_ptr="*fp32",
                         **{a: "i32" for a in "C_IN C_OUT H W GH GW N_MB".split()})
            consts = dict(K=k, MODE=mode, PHASES=4 if mode == 1 else 1, TASKS=tasks, DEMOD=True, NEED_DX=True,
                          NEED_DS=True, ATOMIC=atomic, PREC="ieee" if dt == "fp32" else "tf32",
                          BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k)
            build(backward_conv._dgrad_kernel, types, consts, cfg.num_warps, cfg.num_stages); n += 1
            types = dict(g_ptr="*fp32", x_ptr=P("fp32" if mode == 1 else dt), s_ptr=P(dt), w_ptr=P(dt),
                         e_ptr="*fp32", tid_ptr="*i64", out_ptr="*fp32",
                         **{a: "i32" for a in "NB C_IN C_OUT H W GH GW PH PW".split()})
            consts = dict(K=k, MODE=mode, TASKS=tasks, DEMOD=True, PREC="ieee" if dt == "fp32" else "tf32",
                          BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k)
            build(backward_conv._wgrad_kernel, types, consts, cfg.num_warps, cfg.num_stages); n += 1
    for cfg, kind, outer, atomic in itertools.product(tiles.PROLOGUE_CONFIGS, [2, 3], [False, True], [False, True]):
        if kind == 3 and outer:
            continue
        types = dict(g_ptr="*fp32", a_ptr="*fp32", n_ptr="*fp32", w_ptr="*fp32", dn_ptr="*fp32", da_ptr="*fp32",
                     dadd_ptr="*fp32", C_IN="i32", C_OUT="i32", R="i32", N_OB="i32", coef="fp32")
        consts = dict(KK=9, KIND=kind, OUTER=outer, ATOMIC=atomic, PREC="ieee", R_PAD=16, BLOCK_O=cfg.block_m,
                      BLOCK_C=cfg.block_n)
        build(backward_conv._factor_reduce_kernel, types, consts, cfg.num_warps, 1); n += 1
    for cfg, tasks, dt in itertools.product(tiles.LINEAR_CONFIGS, [False, True], ["fp32", "bf16"]):
        types = dict(gy_ptr=P(dt), y_ptr=P(dt), w_ptr=P(dt), ui_ptr="*fp32", uo_ptr="*fp32", ai_ptr="*fp32",
                     ao_ptr="*fp32", tid_ptr="*i64", dx_ptr="*fp32", gz_ptr="*fp32", scale="fp32", alpha="fp32",
                     **{a: "i32" for a in "N D_IN D_OUT R1 R2 st_ui st_uo st_ai st_ao".split()})
        consts = dict(TASKS=tasks, MUL=True, LOW=True, LRELU=True, STORE_GZ=True,
                      PREC="ieee" if dt == "fp32" else "tf32", R1P=16, R2P=16, BLOCK_M=cfg.block_m,
                      BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k)
        build(backward_linear._linear_dx_kernel, types, consts, cfg.num_warps, cfg.num_stages); n += 1
    # factorised weight gradient: the rank-r launches (fp32 factors, activations in the operand dtype; no
    # demodulation, no style reduction) and the demodulation-term factor reduction
    for dt, k, mode in [("bf16", 1, 0), ("bf16", 3, 2), ("fp32", 3, 1)]:
        cfg = tiles.CONV_CONFIGS[1]
        types = dict(x_ptr=P("fp32" if mode == 1 else dt), s_ptr=P(dt), w_ptr="*fp32", sq_ptr="*fp32", tid_ptr="*i64",
                     out_ptr="*fp32", noise_ptr="*fp32", bias_ptr="*fp32", skip_ptr="*fp32", pre_ptr="*fp32",
                     **{a: "i32" for a in "C_IN C_OUT H W OH OW QH QW sn_b sn_c sn_y sn_x".split()})
        consts = dict(K=k, MODE=mode, PHASES=4 if mode == 2 else 1, TASKS=True, DEMOD=False, HAS_NOISE=False,
                      HAS_BIAS=False, LRELU=False, HAS_SKIP=False, SAVE_PRE=False, PREC="tf32",
                      BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k)
        build(modconv._modconv_kernel, types, consts, cfg.num_warps, cfg.num_stages); n += 1
        types = dict(g_ptr="*fp32", w_ptr="*fp32", x_ptr="*fp32", s_ptr="*fp32", sq_ptr="*fp32", e_ptr="*fp32",
                     tid_ptr="*i64", dx_ptr="*fp32", ds_ptr="*fp32",
                     **{a: "i32" for a in "C_IN C_OUT H W GH GW N_MB".split()})
        consts = dict(K=k, MODE=mode, PHASES=4 if mode == 1 else 1, TASKS=True, DEMOD=False, NEED_DX=True,
                      NEED_DS=False, ATOMIC=False, PREC="ieee", BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                      BLOCK_K=cfg.block_k)
        build(backward_conv._dgrad_kernel, types, consts, cfg.num_warps, cfg.num_stages); n += 1
        types = dict(g_ptr="*fp32", x_ptr=P("fp32" if mode == 1 else dt), s_ptr=P(dt), w_ptr="*fp32",
                     e_ptr="*fp32", tid_ptr="*i64", out_ptr="*fp32",
                     **{a: "i32" for a in "NB C_IN C_OUT H W GH GW PH PW".split()})
        consts = dict(K=k, MODE=mode, TASKS=True, DEMOD=False, PREC="tf32", BLOCK_M=cfg.block_m,
                      BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k)
        build(backward_conv._wgrad_kernel, types, consts, cfg.num_warps, cfg.num_stages); n += 1
    for cfg, lora, atomic, wdt in itertools.product(tiles.PROLOGUE_CONFIGS, [False, True], [False, True],
                                                    ["fp32", "bf16"]):
        if wdt == "bf16" and cfg.name != "pro_32x32":
            continue
        types = dict(w_ptr=P(wdt), m_ptr="*fp32", a_ptr="*fp32", n_ptr="*fp32", dn_ptr="*fp32", da_ptr="*fp32",
                     C_IN="i32", C_OUT="i32", R="i32", coef="fp32")
        consts = dict(KK=9, A_TAP=lora, N_TAP=not lora, ATOMIC=atomic, PREC="ieee", R_PAD=16, BLOCK_O=cfg.block_m,
                      BLOCK_C=cfg.block_n)
        build(backward_conv._demod_factor_kernel, types, consts, cfg.num_warps, 1); n += 1
    print("compiled", n)
''')


def test_kernels_compile_for_sm90():
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=root, env=env, capture_output=True, text=True,
                          timeout=3600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "compiled" in proc.stdout
