"""Typed options declared once: a dataclass field is a CLI flag, a `SHOPCLIP_*` environment variable and a default.

Every command's options (`serve`, `index build|run|ingest`, `train`) are frozen dataclasses whose fields
are declared with `option(default, help)`. `add_arguments` derives the flags (`max_batch` -> `--max-batch`;
booleans get `--x/--no-x`), `from_sources` reads a value from the flag, else from `SHOPCLIP_<FIELD>`,
else the field's default, and hands everything to the dataclass, whose `__post_init__` checks ranges.
`tuple[float, ...]` fields take comma-separated numbers, `list[str]` fields comma-separated names.
Fields declared without `option` are not options: no flag, no variable.
A field whose type is itself such a dataclass is flattened: `BuildOptions.ann` contributes AnnParams'
flags, `ServerConfig.limits` the input policy's. So flags, variables, defaults and help never drift apart.

This module imports neither grpc nor torch: the root CLI declares every command's flags from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, Field
from pathlib import Path
from typing import Any

from shopclip.errors import InvalidInput

ENV_PREFIX = "SHOPCLIP_"
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def option(default: Any = MISSING, help: str = "", *, default_factory: Any = MISSING, flag: str | None = None,
           choices: tuple[str, ...] | None = None, secret: bool = False, env: bool = True) -> Any:
    """A dataclass field that is also a flag (`--<flag or name>`) and, with `env`, `SHOPCLIP_<NAME>`.
    `secret` keeps the value out of repr (and so out of logs)."""
    metadata = {"help": help, "flag": flag, "choices": choices, "env": env}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, repr=not secret, metadata=metadata)
    return dataclasses.field(default=default, repr=not secret, metadata=metadata)


def env_name(name: str) -> str:
    """`SHOPCLIP_<NAME>` of a field or flag name (`index_root`, `index-root`)."""
    return ENV_PREFIX + name.upper().replace("-", "_")


def flag_name(field: Field) -> str:
    return "--" + _public_name(field).replace("_", "-")


def _public_name(field: Field) -> str:
    """The flag's name without dashes (a field may be spelled differently on the command line, e.g.
    AnnParams.kind is `--index`); the environment variable follows it."""
    return field.metadata.get("flag") or field.name


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                  skip: tuple[str, ...] = ()) -> None:
    """One flag per leaf field of `cls` (nested option dataclasses flattened), except `skip`. Parser defaults
    stay None so `from_sources` can tell 'not given' from a value."""
    for field, kind in _leaves(cls):
        if field.name in skip:
            continue
        default = _default(field)
        variable = f"env {env_name(_public_name(field))}, " if field.metadata.get("env", True) else ""
        help_text = f"{field.metadata.get('help', '')} ({variable}default {_show(default)})"
        if kind is bool:
            parser.add_argument(flag_name(field), dest=field.name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            parser.add_argument(flag_name(field), dest=field.name, type=_converter(field.name, kind), default=None,
                                choices=field.metadata.get("choices"), metavar=field.name.upper(), help=help_text)


def from_sources(cls: type, flags: Mapping[str, Any] | argparse.Namespace, env: Mapping[str, str],
                 **given: Any) -> Any:
    """An instance of `cls`: `given` values, then flags that were set, then `SHOPCLIP_*` variables, then
    defaults. Nested option dataclasses are built the same way from the same flags and variables."""
    flags = vars(flags) if isinstance(flags, argparse.Namespace) else flags
    values: dict[str, Any] = dict(given)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in values or not _is_option(field):
            continue
        kind = _scalar(hints[field.name])
        if _is_options(kind):
            values[field.name] = from_sources(kind, flags, env)
        elif flags.get(field.name) is not None:
            values[field.name] = flags[field.name]
        elif field.metadata.get("env", True) and (raw := env.get(env_name(_public_name(field)))) not in (None, ""):
            values[field.name] = parse(field.name, kind, raw, source=env_name(_public_name(field)))
    return cls(**values)


def from_mapping(cls: type, values: Mapping[str, Any], env: Mapping[str, str]) -> Any:
    """`from_sources` with `values` (e.g. a scheduler run's JSON conf) in the place of flags, by field name,
    nested options included; a name that is no option of `cls` is InvalidInput naming it (a typo must not
    silently fall back to a default)."""
    known = {field.name for field, _ in _leaves(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidInput(unknown[0], f"not an option (known: {', '.join(sorted(known))})")
    return from_sources(cls, values, env)


def to_env(config: Any) -> dict[str, str]:
    """The `SHOPCLIP_*` variables that make `from_sources(type(config), {}, env)` rebuild `config`: how a command
    hands its options to a child process it starts (the UI's Streamlit script). Unset (None) options are left out."""
    env: dict[str, str] = {}
    for field in dataclasses.fields(config):
        if not _is_option(field):
            continue
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            env.update(to_env(value))
        elif value is not None and field.metadata.get("env", True):
            env[env_name(_public_name(field))] = _as_text(value)
    return env


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


def parse(name: str, kind: type, raw: str, source: str | None = None) -> Any:
    """Text (a flag or an environment variable) -> the field's type, or InvalidInput naming the field."""
    where = f"{source}={raw!r}" if source else repr(raw)
    try:
        if kind is bool:
            word = raw.strip().lower()
            if word not in TRUE_WORDS + FALSE_WORDS:
                raise ValueError(raw)
            return word in TRUE_WORDS
        if kind is tuple:
            return tuple(float(part) for part in raw.split(",") if part.strip())
        if kind is list:
            return [part.strip() for part in raw.split(",") if part.strip()]
        return kind(raw)
    except ValueError:
        raise InvalidInput(name, f"{where} is not a valid {_type_word(kind)}") from None


def _leaves(cls: type) -> Iterator[tuple[Field, type]]:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if not _is_option(field):
            continue
        kind = _scalar(hints[field.name])
        if _is_options(kind):
            yield from _leaves(kind)
        else:
            yield field, kind


def _is_option(field: Field) -> bool:
    """Declared with `option` (which always records help): a plain dataclass field is not read from flags or
    the environment."""
    return field.init and "help" in field.metadata


def _scalar(hint: Any) -> Any:
    """`int | None` -> int; `tuple[float, ...]` -> tuple (comma-separated numbers); `list[str]` -> list
    (comma-separated names)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    origin = typing.get_origin(hint)
    return origin if origin in (tuple, list) else hint


def _is_options(kind: Any) -> bool:
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


def _converter(name: str, kind: type) -> Any:
    def convert(raw: str) -> Any:
        try:
            return parse(name, kind, raw)
        except InvalidInput as exc:  # argparse prints "argument --flag: <message>" and exits 2
            raise argparse.ArgumentTypeError(exc.message) from None
    convert.__name__ = _type_word(kind)
    return convert


def _default(field: Field) -> Any:
    if field.default is not MISSING:
        return field.default
    if field.default_factory is not MISSING:
        return field.default_factory()
    return None


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(f"{item:g}" if isinstance(item, float) else str(item) for item in value)
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def _type_word(kind: type) -> str:
    return {tuple: "comma-separated list of numbers", list: "comma-separated list of names",
            bool: "boolean (true/false)"}.get(kind, kind.__name__)
