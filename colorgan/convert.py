"""Convert rosinality-format StyleGAN2 checkpoints and published CoLoR-GAN / LFS-GAN adapter
checkpoints into the colorgan checkpoint folder.

* `convert_rosinality`: a `.pt` with `g`, `g_ema`, `d`, `latent_avg` → a checkpoint folder;
  the architecture is read from the tensor shapes (nothing to retype but lr_mlp).
* `convert_adapters`: a published adapter `.pt` (the `weight_modulation.*` tensors,
  stored under `g_ema`) → one task of an existing checkpoint folder.

`.pt` files are read with `torch.load(weights_only=True)`; a file that needs full
unpickling is refused unless `trust_pickle=True`, which warns before loading.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import Tensor

import fastlora
from fastlora import AdapterConfig
from fastlora.bank import add_task_from_tensors, copy_strict
from fastlora.functional import make_blur_kernel
from fastlora.io import load_torch_file

from colorgan.checkpoint import (check_checkpoint_output, load_checkpoint, read_checkpoint_config, save_checkpoint,
                                 save_task_to_checkpoint)
from colorgan.discriminator import Discriminator
from colorgan.generator import W_AVG_SAMPLES, W_AVG_SEED, Generator
from colorgan.layers import channel_table

PathLike = Union[str, os.PathLike]
ADAPTER_FORMATS = ("colorgan", "lfs")
COLORGAN_NAMES = {"lora_A": "A", "lora_B": "B", "lora_B_inst": "B_inst", "lora_bias": "bias"}
LFS_NAMES = {
    "w_mul_in_dim": "U_in", "w_mul_out_dim": "U_out", "w_add_in_dim": "A_in", "w_add_out_dim": "A_out",
    "b_mul": "b_mul", "b_add": "b_add",
    "w_mul1_out_channel_wise": "U", "w_mul1_instance_wise": "T", "w_add1_out_channel_bias": "P",
    "w_add1_instance_bias": "Q", "w_mul2_in_channel_wise": "V", "w_add2_in_channel_bias": "R",
    "w_add2_instance_bias": "S",
}
MARKER = ".weight_modulation."


# ----------------------------------------------------------------------------- loading .pt files

def _tensor_dict(obj: Any, what: str) -> dict[str, Tensor]:
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{what} is not a state dict (a mapping of names to tensors)")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


# ----------------------------------------------------------------------------- architecture from shapes

def _layer_count(sd: Mapping[str, Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.fullmatch(k))})


def _multiplier(size: int, channels: dict[int, int]) -> Optional[int]:
    for cm in range(1, 33):
        if channel_table(size, cm) == channels:
            return cm
    return None


def infer_generator_config(sd: Mapping[str, Tensor], lr_mlp: float = 0.01) -> dict[str, Any]:
    """Generator architecture from a rosinality `g`/`g_ema` state dict's keys and shapes."""
    try:
        style_dim = sd["style.1.weight"].shape[1]
        n_mlp = _layer_count(sd, r"style\.(\d+)\.weight")
        n_rgb = _layer_count(sd, r"to_rgbs\.(\d+)\.bias")
        size = 2 ** (n_rgb + 2)
        channels = {4: sd["input.input"].shape[1]}
        for i in range(n_rgb):
            channels[2 ** (i + 3)] = sd[f"convs.{2 * i}.conv.weight"].shape[1]
    except KeyError as exc:
        raise ValueError(f"not a rosinality StyleGAN2 generator state dict: key {exc.args[0]!r} is missing") from None
    return {"size": size, "style_dim": style_dim, "n_mlp": n_mlp, "lr_mlp": lr_mlp,
            "channel_multiplier": _multiplier(size, channels), "channels": channels}


def infer_discriminator_config(sd: Mapping[str, Tensor]) -> dict[str, Any]:
    """Discriminator architecture from a rosinality `d` state dict's keys and shapes."""
    try:
        n_blocks = _layer_count(sd, r"convs\.(\d+)\.conv2\.1\.weight")
        size = 2 ** (n_blocks + 2)
        channels = {size: sd["convs.0.0.weight"].shape[0]}
        for b in range(1, n_blocks + 1):
            channels[size // 2 ** b] = sd[f"convs.{b}.conv2.1.weight"].shape[0]
    except KeyError as exc:
        raise ValueError(f"not a rosinality StyleGAN2 discriminator state dict: key {exc.args[0]!r} is missing") from None
    return {"size": size, "channel_multiplier": _multiplier(size, channels), "channels": channels}


# ----------------------------------------------------------------------------- rosinality → ours

def _blur_gain(key: str) -> float:
    return 4.0 if key.endswith("upsample.kernel") or ".conv.blur.kernel" in key else 1.0


def _import_state(model: torch.nn.Module, sd: Mapping[str, Tensor], what: str) -> list[str]:
    """Copy a rosinality state dict into `model` strictly; returns the dropped constant buffers."""
    ours = {k: v for k, v in model.state_dict().items() if k != "w_avg" and ".adapters." not in f".{k}"}
    src, dropped = {}, []
    blur = make_blur_kernel(dtype=torch.float64)
    for k, v in sd.items():
        if k.endswith(".kernel") and k not in ours:
            if v.shape != blur.shape or not torch.allclose(v.double(), blur * _blur_gain(k), atol=1e-6):
                raise ValueError(f"{what}: {k} is not StyleGAN2's [1, 3, 3, 1] blur kernel; other FIR kernels "
                                 f"are not supported")
            dropped.append(k)
            continue
        if MARKER in f".{k}" or k.startswith("weight_modulation."):
            raise ValueError(f"{what} holds adapter tensors ({k}); convert the base from the source checkpoint and "
                             f"the adapters with `colorgan convert adapters`")
        if k in ours and v.dim() == 5 and ours[k].dim() == 4 and v.shape[0] == 1:
            v = v.squeeze(0)  # modulated conv weight [1, C_out, C_in, k, k]
        src[k] = v
    copy_strict(ours, src, f"{what} does not match the inferred architecture")
    return dropped


def rosinality_to_models(ckpt: Mapping[str, Any], *, base: str = "g_ema", lr_mlp: float = 0.01,
                         with_d: bool = True, with_g: bool = False, w_avg_samples: int = W_AVG_SAMPLES,
                         source: str = "checkpoint") -> tuple[Generator, Optional[Discriminator], Optional[Generator], dict]:
    """(G from ckpt[base], D, training G, notes) from a loaded rosinality checkpoint dict."""
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"{source}: expected a dict with keys 'g', 'g_ema', 'd', 'latent_avg', got {type(ckpt).__name__}")
    if base not in ("g_ema", "g"):
        raise ValueError(f"base must be 'g_ema' or 'g', got {base!r}")
    if base not in ckpt:
        raise KeyError(f"{source} has no {base!r} entry (it has {sorted(map(str, ckpt))})")
    sd = _tensor_dict(ckpt[base], f"{source}[{base!r}]")
    G = Generator.from_config(infer_generator_config(sd, lr_mlp))
    notes: dict[str, Any] = {"generator_base": base, "dropped_buffers": _import_state(G, sd, f"{source}[{base!r}]")}
    if base == "g_ema" and ckpt.get("latent_avg") is not None:
        la = ckpt["latent_avg"]
        if not isinstance(la, Tensor) or la.numel() != G.style_dim:
            raise ValueError(f"{source}['latent_avg'] must hold {G.style_dim} values, got "
                             f"{list(la.shape) if isinstance(la, Tensor) else type(la).__name__}")
        with torch.no_grad():
            G.w_avg.copy_(la.reshape(-1).to(G.w_avg.dtype))
        notes["w_avg"] = "latent_avg"
    else:
        G.update_w_avg(w_avg_samples, W_AVG_SEED)
        notes["w_avg"] = f"mean of {w_avg_samples} mapped z (seed {W_AVG_SEED})"
    D = None
    if with_d and "d" in ckpt:
        dsd = _tensor_dict(ckpt["d"], f"{source}['d']")
        D = Discriminator.from_config(infer_discriminator_config(dsd))
        if D.size != G.size:
            raise ValueError(f"{source}: discriminator size {D.size} differs from generator size {G.size}")
        _import_state(D, dsd, f"{source}['d']")
    g_train = None
    if with_g and base != "g" and "g" in ckpt:
        gsd = _tensor_dict(ckpt["g"], f"{source}['g']")
        g_train = Generator.from_config(G.config())
        _import_state(g_train, gsd, f"{source}['g']")
        g_train.w_avg.copy_(G.w_avg)
    return G, D, g_train, notes


def convert_rosinality(src: PathLike, out: PathLike, *, base: str = "g_ema", lr_mlp: float = 0.01,
                       with_d: bool = True, with_g: bool = False, trust_pickle: bool = False,
                       overwrite: bool = False, w_avg_samples: int = W_AVG_SAMPLES) -> Path:
    """rosinality `.pt` → checkpoint folder. base: which generator becomes the model ("g_ema",
    the usual; "g" for adapters trained on the non-EMA generator, as the published code does)."""
    out = Path(out)
    check_checkpoint_output(out, overwrite, [src])
    ckpt = load_torch_file(src, trust_pickle)
    G, D, g_train, notes = rosinality_to_models(ckpt, base=base, lr_mlp=lr_mlp, with_d=with_d, with_g=with_g,
                                                w_avg_samples=w_avg_samples, source=str(src))
    source = {"converted_from": str(src), "format": "rosinality", **notes}
    return save_checkpoint(out, G, D, g_train=g_train, overwrite=overwrite, source=source, inputs=[src])


# ----------------------------------------------------------------------------- published adapters

def extract_adapter_tensors(obj: Any, source: str = "checkpoint") -> dict[str, Tensor]:
    """The `<layer>.weight_modulation.<name>` tensors of a published adapter file (under
    'g_ema' as CoLoR-GAN saves them, else 'g', or a flat state dict)."""
    if isinstance(obj, Mapping):
        for key in ("g_ema", "g"):
            if key in obj and isinstance(obj[key], Mapping):
                sd = _tensor_dict(obj[key], f"{source}[{key!r}]")
                if any(MARKER in f".{k}" for k in sd):
                    return {k: v for k, v in sd.items() if MARKER in f".{k}"}
        if all(isinstance(v, Tensor) for v in obj.values()):
            sd = _tensor_dict(obj, source)
            found = {k: v for k, v in sd.items() if MARKER in f".{k}"}
            if found:
                return found
    raise ValueError(f"{source} holds no adapter tensors ('<layer>.weight_modulation.<name>' keys under 'g_ema', "
                     f"'g' or at the top level)")


def detect_adapter_format(tensors: Mapping[str, Tensor]) -> str:
    names = {k.rsplit(".", 1)[1] for k in tensors}
    if names & set(COLORGAN_NAMES) and not names & (set(LFS_NAMES) - {"b_mul", "b_add"}):
        return "colorgan"
    if names <= set(LFS_NAMES):
        return "lfs"
    raise ValueError(f"cannot tell the adapter format from tensor names {sorted(names)}; pass fmt='colorgan' or 'lfs'")


def published_adapter_config(tensors: Mapping[str, Tensor], fmt: str, *, act: Optional[str] = None,
                             alpha_conv: float = 0.1, alpha_linear: float = 4.0,
                             compat: str = "default") -> AdapterConfig:
    """The AdapterConfig of a published adapter file (rank from the shapes; act and alphas are not
    stored in the files: the published defaults are --use_act, alpha_conv 0.1, alpha_fc 4)."""
    if fmt == "colorgan":
        ranks = {v.shape[1] for k, v in tensors.items() if k.endswith(".lora_A")}
        bias = any(k.endswith(".lora_bias") for k in tensors)
        kind, act = "llora", act or "both"
    elif fmt == "lfs":
        ranks = {v.shape[1] for k, v in tensors.items() if k.endswith((".w_mul_in_dim", ".w_mul2_in_channel_wise"))}
        bias, kind, act = True, "left", act or "inner"
    else:
        raise ValueError(f"adapter format must be one of {ADAPTER_FORMATS}, got {fmt!r}")
    if len(ranks) != 1:
        raise ValueError(f"expected one rank across the adapter tensors, found {sorted(ranks)}")
    return AdapterConfig(kind=kind, rank=ranks.pop(), alpha_conv=alpha_conv, alpha_linear=alpha_linear, act=act,
                         compat=compat, bias_offset=bias)


def map_adapter_tensors(tensors: Mapping[str, Tensor], fmt: str, config: AdapterConfig,
                        roles: Mapping[str, str]) -> dict[str, Tensor]:
    """Published names → fastlora task tensors ('<layer>.<name>'); LeFT's missing additive pairs
    (left_use_add off) become zeros; under compat="default" a style affine's LoRA B is scaled by
    alpha_conv/alpha_linear, so the corrected alpha routing computes the same ΔW the file was trained with."""
    table = COLORGAN_NAMES if fmt == "colorgan" else LFS_NAMES
    out: dict[str, Tensor] = {}
    for k, v in tensors.items():
        layer, _, name = k.rpartition(MARKER)
        if name not in table:
            raise ValueError(f"unexpected adapter tensor {k!r}: {fmt} adapters have {sorted(table)}")
        v = v.detach().float()
        if fmt == "colorgan" and name == "lora_B" and roles.get(layer) == "style" and config.compat == "default":
            if config.alpha_linear == 0:
                raise ValueError("alpha_linear must be non-zero to re-route the style affines' alpha")
            v = v * (config.alpha_conv / config.alpha_linear)
        out[f"{layer}.{table[name]}"] = v
    return out


def convert_adapters(src: PathLike, ckpt: PathLike, task: str, *, fmt: str = "auto", act: Optional[str] = None,
                     alpha_conv: float = 0.1, alpha_linear: float = 4.0, compat: str = "default",
                     trust_pickle: bool = False, overwrite: bool = False) -> Path:
    """Add a published CoLoR-GAN / LFS-GAN adapter file to a checkpoint folder as task `task`."""
    tensors = extract_adapter_tensors(load_torch_file(src, trust_pickle), str(src))
    fmt = detect_adapter_format(tensors) if fmt == "auto" else fmt
    config = published_adapter_config(tensors, fmt, act=act, alpha_conv=alpha_conv, alpha_linear=alpha_linear,
                                      compat=compat)
    cfg = read_checkpoint_config(ckpt)
    if task in [e["name"] for e in cfg["tasks"]] and not overwrite:
        raise FileExistsError(f"{ckpt} already has task {task!r}; pass overwrite=True (CLI: --overwrite) to replace it")
    base = cfg.get("source", {}).get("generator_base")
    if base == "g_ema" and compat == "default":
        warnings.warn(f"{ckpt} was converted with base g_ema, but the published adapters were trained on the source "
                      f"checkpoint's g; convert the source with --base g to apply them to the backbone they were "
                      f"trained on (g_ema reproduces the published generation script)", stacklevel=2)
    G, _, _ = load_checkpoint(ckpt, "cpu", tasks=[], load_d=False)
    add_published_task(G, task, tensors, fmt, config, source=str(src))
    return save_task_to_checkpoint(ckpt, G, task, overwrite=overwrite)


def add_published_task(G: Generator, task: str, tensors: Mapping[str, Tensor], fmt: str, config: AdapterConfig,
                       source: str = "adapter file") -> None:
    """Add `task` to G from published adapter tensors (strict: every adapter tensor must be present,
    except LeFT's optional additive pairs)."""
    roles = {path: m.role for path, m in fastlora.adapted_layers(G)}
    mapped = map_adapter_tensors(tensors, fmt, config, roles)
    optional = ("A_in", "A_out", "b_add", "P", "Q", "R", "S") if fmt == "lfs" else ()
    add_task_from_tensors(G, task, config, mapped, f"the adapters in {source} do not fit this generator",
                          optional=optional)
