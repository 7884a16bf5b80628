"""Training settings that take one value per task: `VALUE`, or `[VALUE,]TASK=VALUE,...` (a bare VALUE sets the
tasks not named; without one they get the setting's default, the TrainConfig field's)."""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Union

from colorgan.train.strength import strength_value

MAPPING_ADAPTERS = ("keep", "drop")  # --mapping-adapters


def mapping_mode(text: str) -> str:
    if text not in MAPPING_ADAPTERS:
        raise ValueError("expected keep, drop")
    return text


def weight(text: str) -> float:
    try:
        w = float(text)
    except ValueError:
        raise ValueError("expected a number") from None
    if not (math.isfinite(w) and w >= 0):
        raise ValueError("expected a finite number >= 0")
    return w


# the settings that take a per-task form, and how each value is read
PER_TASK: dict[str, Callable[[str], Any]] = {"mapping_adapters": mapping_mode, "style_anchor": weight,
                                             "mapping_anchor": weight, "mapping_lr_mul": weight,
                                             "style_lr_mul": weight, "strength": strength_value}


def weight_or_spec(text: str) -> Union[float, str]:
    """The command-line form of a per-task weight: a plain number, or the per-task text kept as typed."""
    try:
        return float(text)
    except ValueError:
        return text.strip()


def parse_per_task(name: str, spec: Any, tasks: Sequence[str], default: Any, *,
                   read: Optional[Callable[[str], Any]] = None, among: str = "this run's tasks") -> dict[str, Any]:
    """Setting `name` resolved for every task: {task: value}; `default` for the tasks that neither the list names
    nor a bare value covers. Each value is read by `read` (default: PER_TASK[name]); `among` names the task list
    in messages."""
    value = read or PER_TASK[name]
    bare = None
    named = {}
    for item in (p.strip() for p in str(spec).split(",")):
        task, sep, text = item.rpartition("=")
        try:
            v = value(text)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}, or TASK=VALUE items, got {item!r} in {str(spec)!r}") from None
        if sep and not task:
            raise ValueError(f"{name}: an item names no task: {item!r} in {str(spec)!r}")
        if not sep:
            if bare is not None:
                raise ValueError(f"{name}: more than one setting for the tasks not named in {str(spec)!r}")
            bare = v
        elif task not in tasks:
            raise ValueError(f"{name} names task {task!r}, which is not one of {among} ({', '.join(tasks)})")
        elif task in named:
            raise ValueError(f"{name}: task {task!r} appears twice in {str(spec)!r}")
        else:
            named[task] = v
    return {t: named.get(t, default if bare is None else bare) for t in tasks}
