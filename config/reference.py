"""The station config's reference (docs/reference-config.yaml): every key, its default and description, from the models.

Why generated: a hand-written list drifts from the pydantic models; this one is rebuilt from them and a test fails
when the checked-in file differs. Alternatives (the other source types, optional sections) are commented out.
"""
from __future__ import annotations

import textwrap
import types
import typing
from typing import Any, Literal

import yaml
from pydantic import BaseModel, TypeAdapter
from pydantic.fields import FieldInfo

from linesight.config.daemon import DaemonConfig

WIDTH = 110
HEADER = """\
# linesight station config (`linesight run --config station.yaml`): every key, its default and what it does.
# Generated from the pydantic models (config/daemon.py, config/sources.py, config/outputs.py) by
# `linesight config reference > docs/reference-config.yaml`; tests/test_reference_config.py fails when they differ.
# Keys marked (required) have no default. Sections and source types shown commented out are alternatives:
# uncomment one instead of the active block. Starting points: config/examples/daemon*.yaml.
"""
_CONSTRAINTS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "min length"),
                ("max_length", "max length"))


def reference_yaml() -> str:
    """The whole reference document (YAML with comments) for DaemonConfig."""
    lines = HEADER.splitlines()
    for name, field in DaemonConfig.model_fields.items():
        lines += ["", *_field(name, field, "")]
    return "\n".join(lines) + "\n"


def _model(cls: type[BaseModel], pad: str) -> list[str]:
    lines: list[str] = []
    for name in sorted(cls.model_fields, key=lambda n: n != "type"):  # a source block starts with its type
        lines += _field(name, cls.model_fields[name], pad)
    return lines


def _field(name: str, field: FieldInfo, pad: str) -> list[str]:
    """Description comment, then `name: default` or the nested block (alternatives commented out)."""
    description = _describe(field)
    models = [a for a in _members(field.annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
    default = None if field.is_required() else field.get_default(call_default_factory=True)
    if isinstance(default, BaseModel) and default.model_fields_set:  # the section left out differs from {}
        left_out = default.model_dump(mode="json", include=default.model_fields_set)
        description += " Without this section: " + ", ".join(f"{k}: {_yaml(v)}" for k, v in left_out.items()) + "."
    lines = _comment(description, pad)
    inner = pad + "  "
    if len(models) > 1:  # discriminated union: the first type active, the others as commented blocks
        lines += [f"{pad}{name}:", *_model(models[0], inner)]
        for alt in models[1:]:
            lines += _commented([f"{pad}{name}:", *_model(alt, inner)], pad)
        return lines
    if models:
        if field.is_required() or default is not None:
            return lines + [f"{pad}{name}:", *_model(models[0], inner)]
        return lines + [f"{pad}{name}: null", *_commented([f"{pad}{name}:", *_model(models[0], inner)], pad)]
    if field.is_required():
        return lines + [f"{pad}{name}:"]
    return lines + [f"{pad}{name}: {_yaml(TypeAdapter(field.annotation).dump_python(default, mode='json'))}"]


def _yaml(value: Any) -> str:
    """One value as inline YAML (flow style for lists and mappings)."""
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()


def _describe(field: FieldInfo) -> str:
    text = (field.description or "").strip()
    parts = [text if not text or text.endswith(".") else text + "."]
    literals = [a for a in _members(field.annotation) if typing.get_origin(a) is Literal]
    for lit in literals:
        parts.append("One of: " + " | ".join(str(v) for v in typing.get_args(lit)) + ".")
    limits = [f"{label} {getattr(m, attr)}" for m in field.metadata for attr, label in _CONSTRAINTS
              if getattr(m, attr, None) is not None]
    if limits:
        parts.append(f"Limits: {', '.join(limits)}.")
    if field.is_required():
        parts.append("(required)")
    return " ".join(p for p in parts if p)


def _members(annotation: Any) -> list[Any]:
    """The annotation's union members, unwrapped from Optional/list (so list[Literal[...]] yields the Literal)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in _members(a)]
    if origin is list:
        return _members(typing.get_args(annotation)[0])
    return [annotation]


def _comment(text: str, pad: str) -> list[str]:
    return [f"{pad}# {line}" for line in textwrap.wrap(text, WIDTH - len(pad) - 2)] if text else []


def _commented(block: list[str], pad: str) -> list[str]:
    """An alternative block, commented out at its own indentation (uncomment: drop the `# ` after `pad`)."""
    return [f"{pad}# {line[len(pad):]}" for line in block]
