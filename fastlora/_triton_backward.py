"""The fused backward of the modulated conv and the linear, orchestrated: which kernels of `kernels.backward_conv` run, the
adapter chain rule from their outputs, and the choice of the weight-gradient path.

Forward (per sample b, task t = task_ids[b]): y0 = d ⊙ c, c = conv(x ⊙ s, Ŵ_t) (Ŵ_t = scale·(W ⊕ adapter)),
d = rsqrt(Σ_c s²·Q_t + 1e-8), then the epilogue. The forward saved y0 ("pre") and, for down, the blurred input.

Full path: the kernel gradient G_t per task (`wgrad`), reduced to factor gradients (`factor_reduce`, LLoRA and
LeFT) or by rank-r GEMMs (LoRA), and the small remaining chain rule (through the inner ReLU to B, B_inst;
LeFT's U, T, P, Q, R, S) in torch. Factorised path (frozen base; LoRA, LLoRA act inner/none): no G, rank-r
projections and wgrad/dgrad launches plus the demodulation term (`demod_factor_reduce`).

Linear: `kernels.backward_linear.linear_dx` (dx and gz in one launch); the rank-r and [d_out, d_in] reductions
over the batch rows of each task run as torch GEMMs (N ≤ 32 rows in the mapping network and style affines).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch

from fastlora._operands import linear_operands
from fastlora.adapters import LeFT, LLoRA, LoRA
from kernels import common, fir, modconv, prologue, tiles
from kernels.backward_conv import (_note, adjoint_weights, demod_factor_reduce, dgrad, epilogue_backward,
                                   factor_reduce, wgrad)
from kernels.backward_linear import linear_dx



def _rank_pad(r: int) -> int:
    """Ranks are zero-padded to a multiple of 16 in the factorised path: the rank-r intermediates' pixel rows and
    the rank-r weights' rows stay 16-byte aligned (vector loads), and the padding contributes exact zeros."""
    return -(-r // 16) * 16


def _unpadded(w_k: torch.Tensor, c_out: int) -> torch.Tensor:
    """The K-major weight without its padding columns (the demodulation-term reduction reads [k·k·C_in, C_out])."""
    return w_k if w_k.shape[-1] == c_out else w_k[..., :c_out].contiguous()


def _llora_m(adapter) -> torch.Tensor:
    """LLoRA's M = B·B_inst as [k·k, r, C_out] (fp32), before the inner ReLU."""
    return torch.einsum("om,jmt->tjo", adapter.B.float(), adapter.B_inst.float())


def _llora_chain(adapter, m: torch.Tensor, da: torch.Tensor, dn: torch.Tensor) -> Dict[str, torch.Tensor]:
    """LLoRA gradients from dA [C_in, r] and dN [k·k, C_out, r] (through the inner ReLU to B and B_inst)."""
    dm = dn.permute(2, 1, 0)  # [r, C_out, kk] (j, o, t)
    if adapter.act in ("both", "inner"):
        dm = dm * (m.permute(1, 2, 0) > 0)
    return {"A": da, "B": torch.einsum("jot,jmt->om", dm, adapter.B_inst.float()),
            "B_inst": torch.einsum("jot,om->jmt", dm, adapter.B.float())}


def adapter_grads(adapter, weight: torch.Tensor, g: torch.Tensor, scale: float,
                  deterministic: bool) -> Dict[str, torch.Tensor]:
    """Gradients of one task's adapter tensors from its G [k·k, C_in, C_out] (w.r.t. scale·Ŵ)."""
    kk, c_in, c_out = g.shape
    gw = g.permute(2, 1, 0)  # [C_out, C_in, kk] view, w.r.t. scale·Ŵ
    if isinstance(adapter, LoRA):  # dŴ_mat = scale·G [C_out, C_in·kk]; ΔW = α·B·Aᵀ: two rank-r GEMMs
        gm = gw.reshape(c_out, c_in * kk) * (scale * adapter.alpha)
        return {"A": gm.transpose(0, 1) @ adapter.B.float(), "B": gm @ adapter.A.float()}
    if isinstance(adapter, LLoRA):
        m = _llora_m(adapter)  # [kk, r, C_out]
        nf = torch.relu(m) if adapter.act in ("both", "inner") else m
        da, dn, _ = factor_reduce(g, adapter.A, nf.transpose(1, 2), None, scale * adapter.alpha,
                                  common.KIND_LLORA, adapter.act == "both", deterministic)
        return _llora_chain(adapter, m, da, dn)
    if isinstance(adapter, LeFT):
        U, T, P, Q, V, R, S = (t.float() for t in (adapter.U, adapter.T, adapter.P, adapter.Q, adapter.V, adapter.R,
                                                   adapter.S))
        mul = torch.einsum("om,jmt->tjo", U, T) + (P @ Q.transpose(0, 1)).transpose(0, 1)[:, None, :]
        nf = torch.relu(mul) if adapter.act == "inner" else mul
        dv, dn, dadd = factor_reduce(g, V, nf.transpose(1, 2), weight, scale, common.KIND_LEFT, False,
                                     deterministic)
        dmul = dn.permute(2, 1, 0)  # [r, C_out, kk]
        if adapter.act == "inner":
            dmul = dmul * (mul.permute(1, 2, 0) > 0)
        dpq = dmul.sum(0)  # [C_out, kk]
        dadd_ct = dadd.transpose(0, 1)  # [C_in, kk]
        return {"U": torch.einsum("jot,jmt->om", dmul, T), "T": torch.einsum("jot,om->jmt", dmul, U),
                "P": dpq @ Q, "Q": dpq.transpose(0, 1) @ P, "V": dv, "R": dadd_ct @ S, "S": dadd_ct.transpose(0, 1) @ R}
    raise ValueError(f"no fused backward for {type(adapter).__name__}")


def factorisable(adapter) -> bool:
    """Whether an adapter's update is low-rank in a form the factorised weight gradient handles."""
    return isinstance(adapter, LoRA) or (isinstance(adapter, LLoRA) and adapter.act in ("inner", "none"))


def choose_wgrad_path(adapters: Sequence, need_ad: Sequence[bool], need_weight: bool) -> str:
    """"full" or "factorised": factorised when the base weight is frozen and every adapter that needs a gradient
    is low-rank (LoRA, LLoRA act inner/none), unless `tiles.wgrad_path` / FASTLORA_WGRAD says otherwise."""
    req = tiles.wgrad_path_choice()
    ok = not need_weight and all(factorisable(a) for a, nd in zip(adapters, need_ad) if nd and a is not None)
    if req == "factorised" and not ok:
        raise ValueError("factorised weight gradient forced, but it needs a frozen base weight and LoRA / LLoRA "
                         "(act inner/none) adapters; use 'auto' or 'full'")
    return "factorised" if ok and req != "full" else "full"


def _task_demod_sums(style: torch.Tensor, e: torch.Tensor, task_ids: Optional[torch.Tensor],
                     n_t: int) -> torch.Tensor:
    """M [T, C_in, C_out] = Σ_{b∈t} s[b,c]²·e[b,o] (fp32; one GEMM, no host synchronisation)."""
    n, c_in = style.shape
    s2 = style.float().square()
    if task_ids is None:
        return (s2.t() @ e)[None]
    onehot = torch.zeros((n, n_t), device=style.device, dtype=torch.float32)
    onehot.scatter_(1, task_ids.long()[:, None], 1.0)
    return ((onehot[:, :, None] * s2[:, None, :]).reshape(n, n_t * c_in).t() @ e).reshape(n_t, c_in, -1)


def factorised_adapter_grads(
    gc: torch.Tensor, xin: torch.Tensor, style: torch.Tensor, w_k: torch.Tensor, e: Optional[torch.Tensor],
    task_ids: Optional[torch.Tensor], k: int, mode: int, adapters: Sequence, need_ad: Sequence[bool], scale: float,
    deterministic: bool, c_out: Optional[int] = None,
) -> list:
    """Adapter gradients without the full kernel gradient G (frozen base; LoRA and LLoRA act inner/none).

    With xs = xin⊙s, dc = gc and coef = scale·α (tasks stacked, ranks zero-padded to the group's largest;
    every launch keeps each sample's contribution in its own task's slice):
    LLoRA: u = xs·A (1×1 conv C_in → r), dN_conv = rank-r wgrad(u, dc); v = dgrad of dc through N
    (C_out → r per pixel), dA_conv = 1×1 wgrad(xs, v).
    LoRA: u = k×k conv of xs with A (C_in → r), dB = 1×1 wgrad(u, dc); w = dc·B (1×1, C_out → r),
    dA = k×k wgrad(xs, w) with r output channels.
    Demodulation through Ŵ (−Ŵ⊙M per task) goes through `demod_factor_reduce` (reads Ŵ once)."""
    n, c_in, h, w = xin.shape
    c_out, gh, gw = w_k.shape[-1] if c_out is None else c_out, gc.shape[2], gc.shape[3]
    c_g = gc.shape[1]  # dc may carry zero padding channels (aligned rows); weights read along it are zero-padded
    kk, n_t, dev = k * k, len(adapters), xin.device
    _note("wgrad_factorised")
    cfg, rcfg = tiles.forced("factor"), tiles.forced("reduce")
    m_dem = _task_demod_sums(style, e, task_ids, n_t) if e is not None else None
    out: list = [None] * n_t
    f32 = dict(device=dev, dtype=torch.float32)
    op = dict(device=dev, dtype=w_k.dtype)  # GEMM operands (and rank-r intermediates) in the operand dtype
    ll = [i for i, a in enumerate(adapters) if need_ad[i] and isinstance(a, LLoRA)]
    lo = [i for i, a in enumerate(adapters) if need_ad[i] and isinstance(a, LoRA)]
    if ll:
        rp = _rank_pad(max(adapters[i].rank for i in ll))
        a_st = torch.zeros((n_t, c_in, rp), **op)  # K-major 1×1 weight [C_in, r] per task
        n_st = torch.zeros((n_t, kk, rp, c_out), **op)  # N[j, o, tap] as [tap, j, o] per task
        ms = {}
        for i in ll:
            a = adapters[i]
            ms[i] = _llora_m(a)  # [kk, r, C_out]
            a_st[i, :, :a.rank] = a.A.float()
            n_st[i, :, :a.rank] = torch.relu(ms[i]) if a.act == "inner" else ms[i]
        ones_r = torch.ones((n, rp), **f32)
        u = tiles.empty((n, rp, xin.shape[2], xin.shape[3]), **op).contiguous(memory_format=torch.channels_last)
        modconv.conv(xin, style, a_st, None, 1, modconv.MODE_PLAIN, u, task_ids=task_ids, config=cfg,
                     family="factor")
        gu = wgrad(gc, u, ones_r, n_st, None, task_ids, k, mode, c_out=c_out, config=cfg,
                   family="factor")  # [T, kk, rp, C_out]
        w_adj = adjoint_weights(n_st.reshape(n_t, kk * rp, c_out), rp, c_out, k, mode == modconv.MODE_PLAIN, c_g)
        v = dgrad(gc, w_adj, k, mode, tuple(u.shape), task_ids, config=cfg, family="factor",
                  out_dtype=w_k.dtype)  # [N, rp, H, W]
        gv = wgrad(v, xin, style, a_st, None, task_ids, 1, modconv.MODE_PLAIN, config=cfg, family="factor")
        for i in ll:
            a = adapters[i]
            r, coef = a.rank, scale * a.alpha
            da = gv[i, 0, :, :r] * coef
            dn = gu[i].permute(0, 2, 1)[:, :, :r] * coef  # [kk, C_out, r]
            if m_dem is not None:
                da_d, dn_d = demod_factor_reduce(w_k[i], m_dem[i], a.A, n_st[i, :, :r].transpose(1, 2), kk, coef,
                                                 False, deterministic, config=rcfg)
                da, dn = da + da_d, dn + dn_d
            out[i] = _llora_chain(a, ms[i], da, dn)
    if lo:
        rp = _rank_pad(max(adapters[i].rank for i in lo))
        a_st = torch.zeros((n_t, kk, c_in, rp), **op)  # K-major k×k weight [tap·C_in + c, j]
        b_st = torch.zeros((n_t, c_g, rp), **op)  # K-major 1×1 weight [o, j] (rows beyond C_out zero)
        for i in lo:
            a = adapters[i]
            a_st[i, :, :, :a.rank] = a.A.float().reshape(c_in, kk, a.rank).permute(1, 0, 2)
            b_st[i, :c_out, :a.rank] = a.B.float()
        ones_r = torch.ones((n, rp), **f32)
        u = tiles.empty((n, rp, gh, gw), **op).contiguous(memory_format=torch.channels_last)
        modconv.conv(xin, style, a_st.reshape(n_t, kk * c_in, rp), None, k, mode, u, task_ids=task_ids,
                     config=cfg, family="factor")
        gb = wgrad(gc, u, ones_r, b_st, None, task_ids, 1, modconv.MODE_PLAIN, c_out=c_out, config=cfg,
                   family="factor")
        wp = tiles.empty((n, rp, gh, gw), **op).contiguous(memory_format=torch.channels_last)
        modconv.conv(gc, torch.ones((n, c_g), **f32), b_st, None, 1, modconv.MODE_PLAIN, wp, task_ids=task_ids,
                     config=cfg, family="factor")
        ga = wgrad(wp, xin, style, a_st, None, task_ids, k, mode, config=cfg, family="factor")  # [T, kk, C_in, rp]
        for i in lo:
            a = adapters[i]
            r, coef = a.rank, scale * a.alpha
            db = gb[i, 0, :r, :].t() * coef  # [C_out, r]
            da = ga[i, :, :, :r] * coef  # [kk, C_in, r]
            if m_dem is not None:
                da_d, dn_d = demod_factor_reduce(w_k[i], m_dem[i], a.A, a.B, kk, coef, True, deterministic,
                                                 config=rcfg)
                da, db = da + da_d, db + dn_d.sum(0)
            out[i] = {"A": da.permute(1, 0, 2).reshape(c_in * kk, r), "B": db}
    return out


def left_multiplier(adapter) -> torch.Tensor:
    """LeFT's multiplicative factor G_m [C_out, C_in, kk] (fp32): Ŵ = W ⊙ G_m + add."""
    U, T, P, Q, V = (t.float() for t in (adapter.U, adapter.T, adapter.P, adapter.Q, adapter.V))
    mul = torch.einsum("om,jmt->jot", U, T) + (P @ Q.transpose(0, 1))[None]
    nf = torch.relu(mul) if adapter.act == "inner" else mul
    return torch.einsum("cj,jot->oct", V, nf)


def modulated_conv2d_backward(
    gy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, style: torch.Tensor, adapters: Sequence,
    operands: Sequence, task_ids: Optional[torch.Tensor], scale: float, demodulate: bool, up: bool, down: bool,
    bias: Optional[torch.Tensor], noise: Optional[torch.Tensor], activation: Optional[str],
    pre: torch.Tensor, xb: Optional[torch.Tensor], need: Dict[str, bool], deterministic: bool,
) -> Dict[str, object]:
    """First-order gradients of `kernels.modconv.modulated_conv2d`. `adapters` (for the chain rule) and their
    kernel `operands`, one per task. `need` flags: x, weight, style, bias, noise, skip,
    adapters (a list of bools, one per task). Returns fp32 tensors (the caller casts): keys x, weight, style,
    bias, noise, skip, adapters (a list of {name: grad} or None per task)."""
    n, c_in, h, w = x.shape
    c_out, k = weight.shape[0], weight.shape[2]
    dev, cl = x.device, torch.channels_last
    x = x.contiguous(memory_format=cl)
    style = style.contiguous()
    n_t = len(adapters)
    op_dt = common.operand_dtype(x.dtype)
    w_k, sq = prologue.build_weights(weight, operands, scale, op_dt)
    d = prologue.demod(style, sq, task_ids) if demodulate else None
    lrelu = activation == "lrelu"
    need_ad = [bool(v) for v in need.get("adapters", [False] * n_t)]
    need_g = need.get("weight", False) or any(need_ad)
    gd, gz, sums = epilogue_backward(gy, pre, noise, bias, d, lrelu, need.get("noise", False), op_dt)
    out: Dict[str, object] = {"skip": gy if need.get("skip", False) else None}
    out["bias"] = sums[..., 0].sum(0) if need.get("bias", False) else None
    out["noise"] = gz.sum_to_size(noise.shape) if need.get("noise", False) else None
    e = (sums[..., 1] * d * d).contiguous() if demodulate else None  # dd·d³ with dd = Σ gz·y0 / d
    if up:  # dc at the transposed-conv resolution: the blur's adjoint (operand dtype, channels-last)
        th, tw = 2 * h + k - 2, 2 * w + k - 2
        u0, _ = modconv.up_blur_pad(k)
        gc = tiles.empty((n, gd.shape[1], th, tw), device=dev, dtype=op_dt).contiguous(memory_format=cl)
        fir.blur(gd, (3 - u0, 3 - u0), 4.0, gc)
        mode, xin = modconv.MODE_UP, x
    elif down:
        gc, mode, xin = gd, modconv.MODE_DOWN, xb.contiguous(memory_format=cl)
    else:
        gc, mode, xin = gd, modconv.MODE_PLAIN, x
    dxi = ds = None
    if need.get("x", False) or need.get("style", False):
        w_adj = adjoint_weights(w_k, c_in, c_out, k, mode == modconv.MODE_PLAIN, gc.shape[1])
        dxs = dgrad(gc, w_adj, k, mode, tuple(xin.shape), task_ids)  # fp32, channels-last
        s32 = style.float()
        if need.get("style", False):
            ds = (xin.float() * dxs).sum((2, 3))
            if demodulate:  # − s·Σ_o e[b, o]·Q_t[c, o]
                q = sq[0].t() if task_ids is None else None
                dm = e @ q if q is not None else torch.bmm(sq[task_ids.long()], e[:, :, None])[..., 0]
                ds = ds - s32 * dm
        if need.get("x", False):
            dxi = dxs * s32[:, :, None, None]
            if down:
                p0, _ = modconv.down_blur_pad(k)
                dx = tiles.empty((n, c_in, h, w), device=dev, dtype=torch.float32).contiguous(memory_format=cl)
                dxi = fir.blur(dxi, (3 - p0, 3 - p0), 1.0, dx)
    out["x"], out["style"] = dxi, ds
    out["weight"] = None
    out["adapters"] = [None] * n_t
    if not need_g:
        return out
    if choose_wgrad_path(adapters, need_ad, need.get("weight", False)) == "factorised":
        out["adapters"] = factorised_adapter_grads(gc, xin, style, _unpadded(w_k, c_out), e, task_ids, k, mode,
                                                   adapters, need_ad, scale, deterministic, c_out=c_out)
        return out
    _note("wgrad_full")
    G = wgrad(gc, xin, style, w_k, e, task_ids, k, mode, c_out=c_out)  # [T, kk, C_in, C_out], w.r.t. scale·Ŵ_t
    if need.get("weight", False):
        dw = torch.zeros((c_out, c_in, k * k), device=dev, dtype=torch.float32)
        for i, a in enumerate(adapters):
            gi = G[i].permute(2, 1, 0)
            dw += gi * left_multiplier(a) if isinstance(a, LeFT) else gi
        out["weight"] = (dw * scale).reshape(c_out, c_in, k, k)
    for i, a in enumerate(adapters):
        if a is not None and need_ad[i]:
            out["adapters"][i] = adapter_grads(a, weight, G[i], scale, deterministic)
    return out


# ----------------------------------------------------------------------------- linear

def linear_backward(gy: torch.Tensor, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
                    bias: Optional[torch.Tensor], adapters: Sequence, task_ids: Optional[torch.Tensor], scale: float,
                    bias_scale: float, activation: Optional[str], need: Dict[str, object],
                    deterministic: bool) -> Dict[str, object]:
    """First-order gradients of the fused linear (`kernels.linear.linear`) (y: its saved output). Returns fp32 tensors: keys x,
    weight, bias, adapters (a list of {name: grad} or None per task). Everything is deterministic (no atomics)."""
    need_ad = [bool(v) for v in need.get("adapters", [False] * len(adapters))]
    store_gz = bool(need.get("weight") or need.get("bias") or any(need_ad))
    ui, uo, ai, ao, alpha = linear_operands(adapters, weight.shape[0], weight.shape[1], gy.device)
    dx, gz = linear_dx(gy, y, weight, ui, uo, ai, ao, alpha, task_ids, len(adapters), scale, activation == "lrelu",
                       bool(need.get("x")), store_gz)
    out: Dict[str, object] = {"x": dx, "weight": None, "bias": None, "adapters": [None] * len(adapters)}
    if gz is None:
        return out
    xf = x.float()
    wf = weight.float()
    dw = torch.zeros_like(wf) if need.get("weight") else None
    db = torch.zeros(weight.shape[0], device=x.device, dtype=torch.float32) if bias is not None else None
    for t, a in enumerate(adapters):
        if task_ids is None:
            gz_t, x_t = gz, xf
        else:
            rows = (task_ids == t).to(torch.float32)[:, None]  # mask rows (no host sync)
            gz_t, x_t = gz * rows, xf
        dbh = gz_t.sum(0) * bias_scale  # gradient of the adapted bias b̂_t
        need_full = dw is not None or (isinstance(a, LeFT) and need_ad[t])
        dwh = scale * (gz_t.transpose(0, 1) @ x_t) if need_full else None  # dŴ_t [d_out, d_in]
        grads: Dict[str, torch.Tensor] = {}
        if a is None:
            if dw is not None:
                dw += dwh
            if db is not None:
                db += dbh
        elif isinstance(a, LoRA):
            if dw is not None:
                dw += dwh
            if db is not None:
                db += dbh
            if need_ad[t]:
                c = a.alpha * scale
                grads["B"] = c * (gz_t.transpose(0, 1) @ (x_t @ a.A.float()))
                grads["A"] = c * (x_t.transpose(0, 1) @ (gz_t @ a.B.float()))
                if a.bias is not None:
                    grads["bias"] = dbh
        else:  # LeFT linear
            uo, ui = a.U_out.float(), a.U_in.float()
            if dw is not None:
                dw += dwh * (uo @ ui.transpose(0, 1))
            if db is not None:
                db += dbh * a.b_mul.float() if a.b_mul is not None else dbh
            if need_ad[t]:
                dm = dwh * wf
                grads["U_out"] = dm @ ui
                grads["U_in"] = dm.transpose(0, 1) @ uo
                grads["A_out"] = scale * (gz_t.transpose(0, 1) @ (x_t @ a.A_in.float()))
                grads["A_in"] = scale * (x_t.transpose(0, 1) @ (gz_t @ a.A_out.float()))
                if bias is not None:
                    if a.b_mul is not None:
                        grads["b_mul"] = dbh * bias.float()
                    if a.b_add is not None:
                        grads["b_add"] = dbh
        out["adapters"][t] = grads
    out["weight"] = dw
    out["bias"] = db
    return out
