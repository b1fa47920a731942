"""Typed, validated stage configs: YAML files plus ``key=value`` overrides.

Every stage has one config class derived from :class:`StageConfig`. Unknown keys and bad values are
rejected at construction with a :class:`ConfigError` that names the field, and the resolved config
is saved beside every artifact (``config.json``) so a run can be reproduced or reused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

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
                problems.append(f"{field}: {err['msg']}")
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
    def help_text(cls) -> str:
        """One line per field: name, type, default and description (for ``--help``)."""
        lines = []
        for name, field in cls.model_fields.items():
            ann = getattr(field.annotation, "__name__", str(field.annotation))
            lines.append(f"  {name} ({ann}, default {field.default!r}): {field.description or ''}")
        return "\n".join(lines)


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
