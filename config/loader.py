"""YAML config -> pydantic model, with every problem reported as `file:line: path: message`.

Why not plain `yaml.safe_load` + `model_validate`: operators edit station configs on the line;
"port: Input should be a valid integer" without a line number costs a restart cycle per typo.
So the YAML is composed into nodes (same safe tag set as safe_load), built into plain Python
values while recording the line of every mapping key and list item, `${ENV}` references are
substituted, and pydantic's error locations are mapped back onto those lines.

Secrets: values of fields whose name looks secret (password, token, ...) are never echoed.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml
from pydantic import BaseModel, ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from linesight.config.base import Strict
from linesight.errors import ConfigError

__all__ = [
    "YamlDocument",
    "format_path",
    "is_secret_path",
    "load_model",
    "load_model_and_document",
    "load_model_from_text",
    "parse_yaml",
]

log = logging.getLogger(__name__)

YamlPath = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
# Alias expansion can blow a tiny file up exponentially ("billion laughs"); configs are small.
_MAX_NODES = 100_000
_SECRET_WORDS = ("password", "passwd", "secret", "token", "api_key", "apikey", "credential")
_REDACTED = "***"

# `$${` is a literal `${`; `${NAME}` / `${NAME:-default}`; a lone `${` is malformed.
_ENV_REF = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)\}|(?P<unclosed>\$\{)")
_ENV_BODY = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)


@dataclass(frozen=True)
class YamlDocument:
    """Plain data of one YAML file plus the 1-based line of every key / list item."""

    data: dict[Any, Any]
    lines: dict[YamlPath, int]
    source_name: str


@dataclass(order=True)
class _Problem:
    line: int
    text: str = field(compare=False)


def format_path(path: Sequence[str | int]) -> str:
    """('outputs', 0, 'port') -> 'outputs[0].port' (the form used in every message)."""
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<top level>"


def is_secret_path(path: Sequence[str | int]) -> bool:
    """True when any key on the path names a secret, so its value must never be printed."""
    return any(
        isinstance(p, str) and any(word in p.lower() for word in _SECRET_WORDS) for p in path
    )


def _describe_value(value: Any, secret: bool) -> str:
    if secret:
        return _REDACTED
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Builder:
    """Turns a composed node tree into dicts/lists/scalars, recording lines and env problems."""

    def __init__(self, source_name: str, env: Mapping[str, str]) -> None:
        self.source_name = source_name
        self.env = env
        self.lines: dict[YamlPath, int] = {}
        self.problems: list[_Problem] = []
        self._constructor = yaml.constructor.SafeConstructor()
        self._active: set[int] = set()
        self._count = 0

    def problem(self, line: int, path: YamlPath | None, message: str) -> None:
        where = f"{self.source_name}:{line}: "
        where += f"{format_path(path)}: " if path is not None else ""
        self.problems.append(_Problem(line, where + message))

    def build(self, node: Node, path: YamlPath) -> Any:
        self._count += 1
        if self._count > _MAX_NODES:
            raise ConfigError(
                f"{self.source_name}:{node.start_mark.line + 1}: more than {_MAX_NODES} values "
                "after expanding YAML aliases; simplify the anchors (&) and aliases (*)"
            )
        line = node.start_mark.line + 1
        if isinstance(node, ScalarNode):
            return self._scalar(node, path, line)
        if id(node) in self._active:
            self.problem(line, path, "YAML alias refers to itself (recursive anchor)")
            return None
        if isinstance(node, MappingNode):
            if node.tag != _MAP_TAG:
                self.problem(line, path, f"unsupported YAML tag {node.tag!r} on a mapping")
                return None
            self._active.add(id(node))
            try:
                return self._mapping(node, path)
            finally:
                self._active.discard(id(node))
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ_TAG:
                self.problem(line, path, f"unsupported YAML tag {node.tag!r} on a list")
                return None
            self._active.add(id(node))
            try:
                items = []
                for index, item in enumerate(node.value):
                    child = (*path, index)
                    self.lines[child] = item.start_mark.line + 1
                    items.append(self.build(item, child))
                return items
            finally:
                self._active.discard(id(node))
        raise TypeError(f"unexpected YAML node {type(node).__name__}")  # composer never yields it

    def _mapping(self, node: MappingNode, path: YamlPath) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, ScalarNode):
                continue
            key = self._key(key_node, path, report=False)
            key_line = key_node.start_mark.line + 1
            if key in first_line:
                self.problem(
                    key_line,
                    (*path, key),
                    f"duplicate key (first defined on line {first_line[key]}); remove one",
                )
            else:
                first_line[key] = key_line
        try:
            # `<<: *anchor` merge keys, exactly as safe_load resolves them.
            self._constructor.flatten_mapping(node)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or node.start_mark
            self.problem(mark.line + 1, path, f"invalid merge key: {exc.problem}")
            return {}
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.problem(
                    key_node.start_mark.line + 1, path, "keys must be plain values, not lists/maps"
                )
                continue
            key = self._key(key_node, path)
            child = (*path, key)
            self.lines[child] = key_node.start_mark.line + 1
            result[key] = self.build(value_node, child)
        return result

    def _key(self, node: ScalarNode, path: YamlPath, *, report: bool = True) -> Any:
        try:
            return self._constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError):
            if report:
                self.problem(node.start_mark.line + 1, path, f"cannot read key {node.value!r}")
            return node.value

    def _scalar(self, node: ScalarNode, path: YamlPath, line: int) -> Any:
        try:
            value = self._constructor.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            self.problem(line, path, str(exc.problem))
            return None
        except (ValueError, TypeError, OverflowError):
            shown = _describe_value(node.value, is_secret_path(path))
            self.problem(line, path, f"cannot convert {shown} to {node.tag.rsplit(':', 1)[-1]}")
            return None
        if isinstance(value, str) and "$" in value:
            return self._substitute(value, path, line)
        return value

    def _substitute(self, text: str, path: YamlPath, line: int) -> str:
        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            if match.group("unclosed") is not None:
                self.problem(
                    line, path, "unclosed '${' (write '${NAME}', or '$${' for a literal '${')"
                )
                return match.group(0)
            body = _ENV_BODY.fullmatch(match.group("body"))
            if body is None:
                self.problem(
                    line,
                    path,
                    f"malformed variable reference '${{{match.group('body')}}}' "
                    "(use ${NAME} or ${NAME:-default}; '$${' writes a literal '${')",
                )
                return match.group(0)
            name, default = body.group("name"), body.group("default")
            value = self.env.get(name)
            if value:
                return value
            if default is not None:
                return default
            if value is not None:  # set but empty, no default: same as the shell
                return value
            self.problem(
                line,
                path,
                f"environment variable '{name}' is not set "
                f"(set it, e.g. in the EnvironmentFile, or write ${{{name}:-default}})",
            )
            return ""

        return _ENV_REF.sub(replace, text)


def _compose(text: str, source_name: str) -> Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source_name}:{mark.line + 1}:{mark.column + 1}" if mark else source_name
        detail = exc.problem or "invalid YAML"
        if exc.context and exc.context_mark is not None:
            detail += f" ({exc.context} started on line {exc.context_mark.line + 1})"
        if "'\\t'" in detail:
            detail += "; indent with spaces, YAML does not allow tabs"
        raise ConfigError(f"{where}: YAML syntax error: {detail}") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        raise ConfigError(
            f"{source_name}:{line}: YAML syntax error: {exc.reason} "
            f"(U+{ord(exc.character) if isinstance(exc.character, str) else exc.character:04X}); "
            "the file must be plain UTF-8 text"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source_name}: YAML syntax error: {exc}") from None


def parse_yaml(text: str, source_name: str, env: Mapping[str, str] | None = None) -> YamlDocument:
    """Parse one YAML document (safe tags only), substitute `${ENV}`, keep key/item lines.

    Raises ConfigError for syntax errors, an empty file, a non-mapping top level, or
    unresolvable variables.
    """
    root = _compose(text, source_name)
    if root is None:
        raise ConfigError(f"{source_name}:1: file is empty; expected a mapping of settings")
    if not isinstance(root, MappingNode) or root.tag != _MAP_TAG:
        kind = "a list" if isinstance(root, SequenceNode) else "a single value"
        raise ConfigError(
            f"{source_name}:{root.start_mark.line + 1}: top level must be a mapping of "
            f"settings (key: value lines), got {kind}"
        )
    builder = _Builder(source_name, os.environ if env is None else env)
    builder.lines[()] = root.start_mark.line + 1
    data = builder.build(root, ())
    if builder.problems:
        raise ConfigError(_summary(source_name, builder.problems))
    return YamlDocument(data=data, lines=builder.lines, source_name=source_name)


def _summary(source_name: str, problems: list[_Problem]) -> str:
    ordered = sorted(problems)
    noun = "problem" if len(ordered) == 1 else "problems"
    header = f"{source_name}: invalid configuration ({len(ordered)} {noun}):"
    return "\n".join([header, *(p.text for p in ordered)])


# --- mapping pydantic error locations onto the YAML tree ------------------------------------


def _unwrap(tp: Any) -> Any:
    """Strip Annotated[...] and Optional[...] so the real container/model is visible."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if origin in (Union, types.UnionType):
            members = [m for m in typing.get_args(tp) if m is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
        return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _union_member_for_tag(tp: Any, tag: str | int) -> Any | None:
    """The union member pydantic names `tag` in a loc: a discriminator value or class name."""
    if typing.get_origin(tp) not in (Union, types.UnionType) or not isinstance(tag, str):
        return None
    for member in typing.get_args(tp):
        member = _unwrap(member)
        if not _is_model(member):
            continue
        if member.__name__ == tag:
            return member
        for info in member.model_fields.values():
            ann = _unwrap(info.annotation)
            if typing.get_origin(ann) is Literal and tag in typing.get_args(ann):
                return member
    return None


def _model_field(model: type[BaseModel], key: str | int) -> Any | None:
    for name, info in model.model_fields.items():
        if key in (name, info.alias, info.validation_alias):
            return info
    return None


def _field_names(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _step_type(tp: Any, key: str | int) -> tuple[Any, type[BaseModel] | None]:
    """Type below `key` inside `tp` (None when unknown) and the model `key` was looked up in."""
    tp = _unwrap(tp)
    if _is_model(tp):
        info = _model_field(tp, key)
        return (info.annotation if info is not None else None), tp
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(key, int) and origin in (list, set, frozenset, Sequence):
        return (args[0] if args else None), None
    if isinstance(key, int) and origin is tuple and args:
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0], None
        return (args[key] if key < len(args) else None), None
    if origin in (dict, Mapping) and len(args) == 2:
        return args[1], None
    return None, None


@dataclass
class _Located:
    yaml_path: YamlPath  # deepest path that exists in the document
    shown_path: YamlPath  # what the message names (adds the missing field)
    owner: type[BaseModel] | None  # model holding the last loc element, when resolvable
    read_as: tuple[str, ...]  # plain-union members pydantic tried, e.g. ('MqttOutput',)


def _locate(
    loc: tuple[str | int, ...], missing: bool, model: type[BaseModel], data: Any
) -> _Located:
    """Follow a pydantic loc through data and types; union tags in loc are skipped."""
    tp: Any = model
    owner: type[BaseModel] | None = None
    path: list[str | int] = []
    shown: list[str | int] = []
    read_as: list[str] = []
    node = data
    for index, key in enumerate(loc):
        is_last = index == len(loc) - 1
        unwrapped = _unwrap(tp) if tp is not None else None
        member = _union_member_for_tag(unwrapped, key) if unwrapped is not None else None
        if member is not None:
            if member.__name__ == key:  # smart union: say which alternative failed
                read_as.append(member.__name__)
            tp = member
            continue
        tp, owner = _step_type(tp, key) if tp is not None else (None, None)
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
            node = node[key]
        else:
            if missing and is_last:
                shown.append(key)
            # Otherwise a tag such as 'int' or 'function-after[...]': not part of the YAML.
            continue
        path.append(key)
        shown.append(key)
    return _Located(tuple(path), tuple(shown), owner, tuple(read_as))


def _validation_problems(
    exc: ValidationError, model: type[BaseModel], doc: YamlDocument
) -> list[_Problem]:
    problems = []
    for err in exc.errors(include_url=False):
        kind = err["type"]
        located = _locate(tuple(err["loc"]), kind == "missing", model, doc.data)
        line = doc.lines.get(located.yaml_path, doc.lines[()])
        secret = is_secret_path(located.shown_path)
        if kind == "extra_forbidden":
            message = _unknown_field_message(located)
        else:
            message = str(err["msg"])
            raw = err.get("input")
            if secret and isinstance(raw, str) and raw:
                message = message.replace(raw, _REDACTED)  # custom validators may echo input
            if kind != "missing" and not kind.startswith("union_tag"):
                message += f" (got {_describe_value(raw, secret)})"
        if located.read_as:
            message += f" [when read as {' > '.join(located.read_as)}]"
        where = f"{doc.source_name}:{line}: {format_path(located.shown_path)}"
        problems.append(_Problem(line, f"{where}: {message}"))
    return problems


def _unknown_field_message(located: _Located) -> str:
    name = str(located.shown_path[-1]) if located.shown_path else "?"
    if located.owner is None:
        return f"unknown field '{name}'"
    moved = located.owner.moved_to(name) if issubclass(located.owner, Strict) else None
    if moved:
        return f"{name} is now {moved}"
    known = _field_names(located.owner)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f"unknown field '{name}' (did you mean '{close[0]}'?)"
    return f"unknown field '{name}' (allowed: {', '.join(known)})"


# --- public entry points --------------------------------------------------------------------


def _validate_text(
    text: str, model: type[M], source_name: str, env: Mapping[str, str] | None
) -> tuple[M, YamlDocument]:
    doc = parse_yaml(text, source_name, env)
    try:
        result = model.model_validate(doc.data)
    except ValidationError as exc:
        raise ConfigError(_summary(source_name, _validation_problems(exc, model, doc))) from None
    log.debug("config loaded", extra={"config_source": source_name, "config_model": model.__name__})
    return result, doc


def load_model_from_text(
    text: str, model: type[M], source_name: str, env: Mapping[str, str] | None = None
) -> M:
    """Validate YAML `text` against `model`; ConfigError lists every `file:line: path: problem`."""
    return _validate_text(text, model, source_name, env)[0]


def load_model(
    path: str | Path, model: type[M], *, env: Mapping[str, str] | None = None
) -> M:
    """Read a UTF-8 YAML file and validate it; every failure is a ConfigError naming the file."""
    return load_model_and_document(path, model, env=env)[0]


def load_model_and_document(
    path: str | Path, model: type[M], *, env: Mapping[str, str] | None = None
) -> tuple[M, YamlDocument]:
    """`load_model` plus the parsed document, whose `lines` let later checks (e.g. a missing file the
    config names) point at the YAML line of the setting."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (check the --config path)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a YAML config file") from None
    except PermissionError:
        raise ConfigError(
            f"{path}: permission denied reading the config (the daemon user needs read access)"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (invalid byte at offset {exc.start}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    return _validate_text(text, model, str(path), env)
