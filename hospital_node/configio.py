"""Frozen-dataclass configuration from TOML and `section.field=value` overrides, and back."""

from __future__ import annotations

import dataclasses
import logging
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message names the field."""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a TOML/CLI value to the annotated type `tp` (scalars, tuples, optionals)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(value, args[0], where)
    if _is_dataclass_type(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return from_mapping(tp, value, where=where)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        items = [i for i in items if not (isinstance(i, str) and not i.strip())]
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(
                _coerce(i.strip() if isinstance(i, str) else i, args[0], where) for i in items
            )
        return tuple(_coerce(i, a, where) for i, a in zip(items, args, strict=True))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (
            "true",
            "1",
            "yes",
            "on",
            "false",
            "0",
            "no",
            "off",
        ):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is Path:
        return Path(value).expanduser() if isinstance(value, str | Path) else value
    if tp in (int, float, str):
        try:
            return tp(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from exc
    return value


def _field_default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def from_mapping(cls: type[T], mapping: Mapping[str, Any], *, where: str = "") -> T:
    """Build dataclass `cls` from a nested mapping: unknown keys fail, missing ones default.

    A nested table only overrides the fields it names: the rest keep the defaults of the
    enclosing dataclass's field (e.g. the simulation's own ConsensusConfig defaults).
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown field(s) {unknown}; known: {sorted(fields)}"
        )
    kwargs = {}
    for key, value in mapping.items():
        path = f"{where}.{key}" if where else key
        default = _field_default(fields[key])
        if dataclasses.is_dataclass(default) and isinstance(value, Mapping):
            value = {**to_dict(default), **value}
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or cls.__name__}: {exc}") from exc


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON/TOML-friendly dict of a (nested) dataclass; tuples become lists."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple | list):
            return [convert(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    return convert(config)


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """['training.steps=100', 'methods=local,gossip'] -> nested dict of strings (coerced later)."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r} is not of the form section.field=value")
        node = nested
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {pair!r} conflicts with another override")
        node[leaf] = value.strip()
    return nested


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`update` over `base`, recursively for nested tables."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def migrate(
    data: Mapping[str, Any], moved: Mapping[str, str], *, where: str = "config"
) -> dict[str, Any]:
    """Move keys an earlier version kept elsewhere (`moved`: "old.dotted" -> "new.dotted").

    Each move is logged as a warning that names the new place; a key given at both places is
    an error rather than a guess.
    """
    result = deep_merge({}, data)
    for old, new in moved.items():
        *parents, leaf = old.split(".")
        table = result
        for part in parents:
            table = table.get(part) if isinstance(table, Mapping) else None
        if not isinstance(table, dict) or leaf not in table:
            continue
        value = table.pop(leaf)
        *new_parents, new_leaf = new.split(".")
        target = result
        for part in new_parents:
            target = target.setdefault(part, {})
        if new_leaf in target:
            raise ConfigError(f"both {old} (old place) and {new} are given; keep {new}")
        target[new_leaf] = value
        log.warning("%s: %s has moved to %s; please update the file", where, old, new)
    return result


def read_toml(path: Path, *, what: str = "config file") -> dict[str, Any]:
    """The tables of a TOML file; the one reader of every TOML the product takes.

    A missing, unreadable or malformed file is a ConfigError that names it and says why.
    """
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from exc


def load_config(
    cls: type[T],
    path: Path | None,
    overrides: Mapping[str, Any] | None = None,
    *,
    moved: Mapping[str, str] | None = None,
) -> T:
    """Defaults <- TOML file <- overrides, validated into `cls` (old keys moved first)."""
    data = read_toml(path) if path is not None else {}
    merged = deep_merge(data, overrides or {})
    if moved:
        merged = migrate(merged, moved, where=str(path or cls.__name__))
    return from_mapping(cls, merged)
