"""Typed, validated stage configs: YAML files plus ``key=value`` overrides.

Every stage has one config class derived from :class:`StageConfig`. Unknown keys and bad values are
rejected at construction with a :class:`ConfigError` that names the field, and the resolved config
is saved beside every artifact (``config.json``) so a run can be reproduced or reused.
"""

from __future__ import annotations

import difflib
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import PydanticUndefined

from ntulm.errors import ConfigError

C = TypeVar("C", bound="StageConfig")


class StageConfig(BaseModel):
    """Base of every stage config: strict (unknown keys are errors) and immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @classmethod
    def build(cls: type[C], data: dict[str, Any] | None = None, *, source: str = "config") -> C:
        """Validate ``data`` into a config, turning pydantic's errors into one readable message."""
        try:
            return cls.model_validate(data or {})
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"]) or "<root>"
                msg = err["msg"]
                if err["type"] == "extra_forbidden":  # a typo, most of the time
                    msg = "unknown key" + _suggest(cls, err["loc"])
                problems.append(f"{field}: {msg}")
            raise ConfigError(f"{source}: invalid {cls.__name__}: " + "; ".join(problems)) from None

    @classmethod
    def from_sources(
        cls: type[C],
        file: str | Path | None = None,
        overrides: list[str] | None = None,
        base: dict[str, Any] | None = None,
    ) -> C:
        """Merge ``base`` <- YAML ``file`` <- ``key=value`` overrides, then validate."""
        data: dict[str, Any] = dict(base or {})
        source = "config"
        if file is not None:
            data = deep_merge(data, read_yaml(file))
            source = str(file)
        for item in overrides or []:
            key, value = parse_override(item)
            data = deep_merge(data, nest(key, value))
        return cls.build(data, source=source)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)

    @classmethod
    def help_text(cls, prefix: str = "") -> str:
        """One line per field: name, type, default and description (for ``--help``); the fields
        of a nested config as dotted keys (``text.mentions``), as overrides spell them."""
        lines = []
        for name, field in cls.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, StageConfig):
                lines.append(f"  {prefix}{name}.*: {field.description or ''}")
                lines.append(ann.help_text(prefix=f"{prefix}{name}."))
                continue
            default = field.get_default(call_default_factory=True)
            shown = "required" if default is PydanticUndefined else f"default {default!r}"
            lines.append(
                f"  {prefix}{name} ({_type_name(ann)}, {shown}): {field.description or ''}"
            )
        return "\n".join(lines)


def _type_name(ann: Any) -> str:
    if typing.get_origin(ann) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(ann))
    if typing.get_origin(ann) is None and hasattr(ann, "__name__"):
        return ann.__name__  # a plain class: int, str, ...
    return str(ann).replace("typing.", "")  # list[str], str | None, ...


def _models_in(ann: Any) -> list[type[BaseModel]]:
    """The config classes inside an annotation (``X``, ``list[X]``, ``X | None``, unions, ...)."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(ann):
        out.extend(_models_in(arg))
    return out


def _suggest(cls: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """``" (did you mean 'max_steps'?)"`` for the unknown key at ``loc``, else the valid keys."""
    here: list[type[BaseModel]] = [cls]
    for part in loc[:-1]:
        nxt: list[type[BaseModel]] = []
        for model in here:
            if isinstance(part, str) and part in model.model_fields:
                nxt.extend(_models_in(model.model_fields[part].annotation))
            else:  # a list index, a dict key or a union tag: the same config class
                nxt.append(model)
        here = nxt
    valid = sorted({k for model in here for k in model.model_fields})
    if not valid:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), valid, n=2, cutoff=0.6)
    if close:
        return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"
    return f" (valid keys: {', '.join(valid)})"


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping, got {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """``a.b=3`` -> ("a.b", 3); the value is parsed as YAML (numbers, lists, booleans)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def nest(dotted: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out
