"""AdapterConfig: what kind of adapter a task adds to every adaptable layer, and how."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from fastlora.deltas import ACTS, LEFT_ACTS

# kind -> (the adapter form on linear layers, the form on convolutions)
FORMS = {"llora": ("lora", "llora"), "lora": ("lora", "lora"), "left": ("left", "left"),
         "left-linear": ("left", "llora"), "left-conv": ("lora", "left")}
KINDS = tuple(FORMS)
COMPATS = ("default", "upstream")
ROLES = ("mapping", "style", "conv", "disc")


@dataclass(frozen=True)
class AdapterConfig:
    """One task's adapter configuration.

    kind:  "llora" — CoLoR-GAN: LoRA on linear layers, LLoRA on convolutions;
           "lora"  — LoRA everywhere (conv LoRA spans C_in·k·k, the PEFT form);
           "left"  — LFS-GAN's LeFT on linear layers and convolutions;
           "left-linear" — LeFT on linear layers, LLoRA on convolutions;
           "left-conv"   — LoRA on linear layers, LeFT on convolutions.
    rank, alpha_conv (conv adapters), alpha_linear (linear adapters).
    act:   the conv adapter's activation: LLoRA "both", "inner" or "none"; LeFT "inner" or "none".
    compat: "default" (identity at initialisation, every tensor trains, correct alpha
           routing) or "upstream" (the published initialisation and alpha routing).
    bias_offset: linear LoRA adapters carry an additive bias offset.
    strength: the fraction of the trained adapters' effect a task keeps, in [0, 1]: every adapted weight and bias
           is W + strength·(Ŵ − W) (1: as trained, 0: the base; `fastlora.set_strength`). Realised exactly through
           the adapter's own factors (LeFT's multiplicative linear factors gain one rank at run time); not
           available for LeFT on convolutions.
    """

    kind: str = "llora"
    rank: int = 1
    alpha_conv: float = 0.1
    alpha_linear: float = 4.0
    act: str = "inner"
    compat: str = "default"
    bias_offset: bool = True
    strength: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"adapter kind must be one of {KINDS}, got {self.kind!r}")
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"adapter rank must be a positive integer, got {self.rank!r}")
        if self.compat not in COMPATS:
            raise ValueError(f"compat must be one of {COMPATS}, got {self.compat!r}")
        allowed = LEFT_ACTS if self.form(conv=True) == "left" else ACTS
        if self.act not in allowed:
            raise ValueError(f"act for kind {self.kind!r} must be one of {allowed}, got {self.act!r}")
        ok = isinstance(self.strength, (int, float)) and not isinstance(self.strength, bool) \
            and 0.0 <= self.strength <= 1.0
        if not ok:
            raise ValueError(f"adapter strength must be a number in [0, 1], got {self.strength!r}")
        if self.strength != 1.0 and self.form(conv=True) == "left":
            raise ValueError(f"adapter strength below 1 is not available for kind {self.kind!r} (LeFT on "
                             f"convolutions), got {self.strength!r}")

    @classmethod
    def upstream(cls, **overrides: Any) -> "AdapterConfig":
        """The published CoLoR-GAN configuration (train flags --rank 1 --use_act
        --lora_alpha_conv 0.1 --lora_alpha_fc 4) with its initialisation."""
        return cls(**{"kind": "llora", "rank": 1, "alpha_conv": 0.1, "alpha_linear": 4.0, "act": "both",
                      "compat": "upstream", **overrides})

    def form(self, *, conv: bool) -> str:
        """The adapter form ("lora", "llora" or "left") this kind puts on a conv or a linear layer."""
        return FORMS[self.kind][1 if conv else 0]

    def alpha_for(self, role: str) -> float:
        """The alpha a layer of this role receives (the published code routes the
        conv alpha to the style affines; the default fixes that)."""
        if role not in ROLES:
            raise ValueError(f"layer role must be one of {ROLES}, got {role!r}")
        if role in ("conv", "disc"):
            return self.alpha_conv
        if role == "style" and self.compat == "upstream":
            return self.alpha_conv
        return self.alpha_linear

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AdapterConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown adapter config keys {sorted(unknown)}; expected a subset of {sorted(names)}")
        return cls(**dict(d))
