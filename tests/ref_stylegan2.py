"""Test helper: an independent reference forward of StyleGAN2 in the rosinality key layout
(per-sample grouped modulated convs, explicit zero-stuffing FIR), with the published
CoLoR-GAN (LoRA / LLoRA, conv alpha on the style affines) and LFS-GAN (LeFT) adapter math,
written from the formulas in docs/design.md §2–3 and docs/upstream_notes.md. Used to check that
converted checkpoints compute the same functions."""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F

SQRT2 = math.sqrt(2.0)


def fir_kernel(gain: float = 1.0) -> torch.Tensor:
    k = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
    k = k[None, :] * k[:, None]
    return (k / k.sum() * gain).float()


def fir(x, k, up=1, down=1, pad=(0, 0)):
    n, c, h, w = x.shape
    if up > 1:
        z = x.new_zeros(n, c, h * up, w * up)
        z[:, :, ::up, ::up] = x
        x = z
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    x = F.conv2d(x, k.flip(0, 1)[None, None].repeat(c, 1, 1, 1).to(x), groups=c)
    return x[:, :, ::down, ::down]


def lrelu(x, b):
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return F.leaky_relu(x + b.reshape(shape), 0.2) * SQRT2


# ------------------------------------------------------------------ adapters (published math)

class Adapters:
    """Published adapter tensors keyed '<layer>.weight_modulation.<name>'."""

    def __init__(self, tensors=None, fmt="colorgan", alpha_conv=0.1, alpha_fc=4.0, act=True):
        self.t = tensors or {}
        self.fmt, self.alpha_conv, self.alpha_fc, self.act = fmt, alpha_conv, alpha_fc, act

    def _get(self, layer, name):
        return self.t.get(f"{layer}.weight_modulation.{name}")

    def linear(self, layer, W, b, is_style):
        if not self.t:
            return W, b
        if self.fmt == "colorgan":
            A, B, bias = self._get(layer, "lora_A"), self._get(layer, "lora_B"), self._get(layer, "lora_bias")
            alpha = self.alpha_conv if is_style else self.alpha_fc  # published routing
            return W + alpha * (B @ A.T), b + bias
        Ui, Uo = self._get(layer, "w_mul_in_dim"), self._get(layer, "w_mul_out_dim")
        W = W * (Uo @ Ui.T)
        Ai, Ao = self._get(layer, "w_add_in_dim"), self._get(layer, "w_add_out_dim")
        if Ai is not None:
            W = W + Ao @ Ai.T
        b = b * self._get(layer, "b_mul")
        if self._get(layer, "b_add") is not None:
            b = b + self._get(layer, "b_add")
        return W, b

    def conv(self, layer, W):
        """W [C_out, C_in, k, k] → adapted."""
        if not self.t:
            return W
        co, ci, k, _ = W.shape
        act = torch.relu if self.act else (lambda x: x)
        if self.fmt == "colorgan":
            A, B, Bi = self._get(layer, "lora_A"), self._get(layer, "lora_B"), self._get(layer, "lora_B_inst")
            Bm = act(torch.matmul(B, Bi))                  # [r, C_out, k²]
            AB = torch.matmul(A, Bm.transpose(1, 0))       # [C_out, C_in, k²]
            return W + (self.alpha_conv * act(AB)).reshape(co, ci, k, k)
        U, T, V = (self._get(layer, n) for n in ("w_mul1_out_channel_wise", "w_mul1_instance_wise",
                                                 "w_mul2_in_channel_wise"))
        mul1 = torch.matmul(U, T)
        P = self._get(layer, "w_add1_out_channel_bias")
        if P is not None:
            mul1 = mul1 + (P @ self._get(layer, "w_add1_instance_bias").T).unsqueeze(0)
        mul2 = torch.matmul(V, act(mul1).transpose(1, 0))
        W = W * mul2.reshape(co, ci, k, k)
        R = self._get(layer, "w_add2_in_channel_bias")
        if R is not None:
            W = W + (R @ self._get(layer, "w_add2_instance_bias").T).reshape(1, ci, k, k)
        return W


# ------------------------------------------------------------------ generator

def equal_linear(x, W, b, lr_mul, act):
    y = x @ (W * lr_mul / math.sqrt(W.shape[1])).T
    return lrelu(y, b * lr_mul) if act else y + b * lr_mul


def modconv(sd, ad, prefix, x, w, demod, up):
    W5 = sd[f"{prefix}.weight"]
    W = ad.conv(prefix, W5[0])[None]
    mW, mb = ad.linear(f"{prefix}.modulation", sd[f"{prefix}.modulation.weight"], sd[f"{prefix}.modulation.bias"],
                       True)
    s = equal_linear(w, mW, mb, 1.0, False)
    n, ci, h, wd = x.shape
    co, k = W.shape[1], W.shape[-1]
    wt = W / math.sqrt(ci * k * k) * s.reshape(n, 1, ci, 1, 1)
    if demod:
        wt = wt * torch.rsqrt(wt.pow(2).sum([2, 3, 4]) + 1e-8).reshape(n, co, 1, 1, 1)
    xg = x.reshape(1, n * ci, h, wd)
    if up:
        wt = wt.transpose(1, 2).reshape(n * ci, co, k, k)
        out = F.conv_transpose2d(xg, wt, stride=2, padding=0, groups=n)
        out = out.reshape(n, co, *out.shape[2:])
        return fir(out, sd[f"{prefix}.blur.kernel"], pad=(1, 1))
    out = F.conv2d(xg, wt.reshape(n * co, ci, k, k), padding=k // 2, groups=n)
    return out.reshape(n, co, *out.shape[2:])


def generator(sd, z, ad=None, truncation=1.0, latent_avg=None, lr_mlp=0.01):
    """Reference image for z (const noise buffers), rosinality layout."""
    ad = ad or Adapters()
    n_mlp = len({m.group(1) for k in sd if (m := re.fullmatch(r"style\.(\d+)\.weight", k))})
    n_rgb = len({m.group(1) for k in sd if (m := re.fullmatch(r"to_rgbs\.(\d+)\.bias", k))})
    x = z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8)
    for i in range(1, n_mlp + 1):
        W, b = ad.linear(f"style.{i}", sd[f"style.{i}.weight"], sd[f"style.{i}.bias"], False)
        x = equal_linear(x, W, b, lr_mlp, True)
    if truncation < 1:
        x = latent_avg + truncation * (x - latent_avg)
    n = z.shape[0]

    def styled(prefix, h, i, up):
        out = modconv(sd, ad, f"{prefix}.conv", h, x, True, up)
        out = out + sd[f"{prefix}.noise.weight"] * sd[f"noises.noise_{i}"]
        return lrelu(out, sd[f"{prefix}.activate.bias"])

    def rgb(prefix, h, skip):
        out = modconv(sd, ad, f"{prefix}.conv", h, x, False, False) + sd[f"{prefix}.bias"]
        if skip is not None:
            out = out + fir(skip, sd[f"{prefix}.upsample.kernel"], up=2, pad=(2, 1))
        return out

    h = sd["input.input"].repeat(n, 1, 1, 1)
    h = styled("conv1", h, 0, False)
    skip = rgb("to_rgb1", h, None)
    for j in range(n_rgb):
        h = styled(f"convs.{2 * j}", h, 1 + 2 * j, True)
        h = styled(f"convs.{2 * j + 1}", h, 2 + 2 * j, False)
        skip = rgb(f"to_rgbs.{j}", h, skip)
    return skip


# ------------------------------------------------------------------ discriminator

def conv_layer(sd, prefix, x, down, act=True):
    if down:
        k = sd[f"{prefix}.0.kernel"]
        W = sd[f"{prefix}.1.weight"]
        p = 2 + W.shape[-1] - 1
        x = fir(x, k, pad=((p + 1) // 2, p // 2))
        y = F.conv2d(x, W / math.sqrt(W[0].numel()), stride=2)
        return lrelu(y, sd[f"{prefix}.2.bias"]) if act else y
    W = sd[f"{prefix}.0.weight"]
    y = F.conv2d(x, W / math.sqrt(W[0].numel()), padding=W.shape[-1] // 2)
    return lrelu(y, sd[f"{prefix}.1.bias"]) if act else y


def discriminator(sd, x):
    n_blocks = len({m.group(1) for k in sd if (m := re.fullmatch(r"convs\.(\d+)\.conv1\.0\.weight", k))})
    h = conv_layer(sd, "convs.0", x, False)
    for b in range(1, n_blocks + 1):
        out = conv_layer(sd, f"convs.{b}.conv2", conv_layer(sd, f"convs.{b}.conv1", h, False), True)
        h = (out + conv_layer(sd, f"convs.{b}.skip", h, True, act=False)) / SQRT2
    n, c, hh, ww = h.shape
    g = min(n, 4)
    s = h.reshape(g, -1, 1, c, hh, ww)
    s = torch.sqrt(s.var(0, unbiased=False) + 1e-8).mean([2, 3, 4], keepdim=True).squeeze(2)
    h = torch.cat([h, s.repeat(g, 1, hh, ww)], 1)
    h = conv_layer(sd, "final_conv", h, False).reshape(n, -1)
    h = equal_linear(h, sd["final_linear.0.weight"], sd["final_linear.0.bias"], 1.0, True)
    return equal_linear(h, sd["final_linear.1.weight"], sd["final_linear.1.bias"], 1.0, False)
