"""Config fields that are also command-line options: defaults, choices and help written once.

A config dataclass declares each user-facing field with `option(...)`; `add_options` turns those
fields into argparse options of a command (`--alpha-conv` for `alpha_conv`, plus any alias
spellings), and `given_options` returns only what the user typed, so the dataclass defaults stay
the single source of truth (and a resumed run can tell which settings were asked for).
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Iterable, Optional, Sequence


def option(default: Any = dataclasses.MISSING, help: str = "", *, flags: Sequence[str] = (),
           choices: Optional[Sequence[Any]] = None, parse: Optional[Callable[[str], Any]] = None,
           metavar: Optional[str] = None) -> Any:
    """A dataclass field that is also a CLI option.

    flags: the option strings (default `--name-with-dashes`; more for alias spellings); choices: allowed
    values; parse: turns the typed text into the value (default: the type of `default`)."""
    meta = {"help": help, "flags": tuple(flags), "choices": tuple(choices) if choices else None, "parse": parse,
            "metavar": metavar}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def option_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of a config dataclass declared with `option`."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def flags_of(f: dataclasses.Field) -> tuple[str, ...]:
    return f.metadata["flags"] or ("--" + f.name.replace("_", "-"),)


def _value_type(f: dataclasses.Field) -> Callable[[str], Any]:
    """The type of a field's values: its default's, else its annotation's (int, float or str)."""
    if f.default not in (None, dataclasses.MISSING):
        return type(f.default)
    annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str")
    for name, t in (("int", int), ("float", float)):
        if annotation in (name, f"Optional[{name}]", f"{name} | None"):
            return t
    return str


def add_options(parser: argparse.ArgumentParser, cls: type, *, exclude: Iterable[str] = ()) -> None:
    """Add one option per `option` field of `cls` (defaults are not stored in the namespace: see `given_options`)."""
    skip = set(exclude)
    for f in option_fields(cls):
        if f.name in skip:
            continue
        meta, default = f.metadata, f.default
        shown = "" if default is dataclasses.MISSING or default is None or isinstance(default, bool) \
            else f" (default {default})"
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": meta["help"] + shown}
        if default is False:
            kw["action"] = "store_true"
        elif default is True:
            kw["action"] = argparse.BooleanOptionalAction  # --name / --no-name
        else:
            kw["type"] = meta["parse"] or _value_type(f)
            if meta["choices"]:
                kw["choices"] = meta["choices"]
            if meta["metavar"]:
                kw["metavar"] = meta["metavar"]
        parser.add_argument(*flags_of(f), **kw)


def given_options(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The `option` fields of `cls` the user gave on the command line, by field name."""
    return {f.name: getattr(args, f.name) for f in option_fields(cls) if hasattr(args, f.name)}


def flag(cls: type, name: str) -> str:
    """The main option string of field `name` (for messages)."""
    return flags_of(next(f for f in option_fields(cls) if f.name == name))[0]
