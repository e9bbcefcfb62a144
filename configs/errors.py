"""Config errors as one line each: file, line, dotted path, value, what to do.

    configs/prod.yaml:14: switching.steps[2] = 1.5: Input should be less than or equal to 1
    configs/prod.yaml:9: policy.type = "latncy": unknown policy; known: adaptive, cost, ...
    configs/prod.yaml:3: server.lisen: unknown key; did you mean "listen"? known: admin_listen, ...

Pydantic reports where an error is as a tuple of keys and indices; `locate`
walks the YAML node tree along it to find the line. Tuple elements that are
not in the file (a union's tag, a dict key's marker) are skipped, so the
path printed is the one the user wrote.
"""

from __future__ import annotations

import difflib
import json
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic_core import ErrorDetails

from policies.registry import PolicySpec, UnknownPolicy, resolve

Loc = tuple[str | int, ...]


def locate(root: yaml.Node | None, loc: Loc) -> tuple[Loc, int | None]:
    """(the part of `loc` found in the file plus its last element, 1-based line)."""
    node = root
    path: list[str | int] = []
    line = node.start_mark.line + 1 if node is not None else None
    for i, key in enumerate(loc):
        last = i == len(loc) - 1
        found = None
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == str(key):
                    found = (key_node, value_node)
                    break
            if found is not None:
                path.append(key)
                line = (found[0] if last else found[1]).start_mark.line + 1
                node = found[1]
                continue
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            path.append(key)
            node = node.value[key]
            line = node.start_mark.line + 1
            continue
        if _is_marker(node, key):
            continue
        # A key the file does not have (a missing field, or one left to its
        # default): name it, at the line of the nearest part that exists.
        path.append(key)
        node = None
    return tuple(path), line


def _is_marker(node: yaml.Node | None, key: str | int) -> bool:
    """Pydantic's own loc elements: a tagged union's tag, a dict-key marker."""
    if not isinstance(key, str):
        return False
    if key.startswith(("function-", "[")):
        return True
    return isinstance(node, yaml.MappingNode) and any(
        isinstance(value, yaml.ScalarNode) and value.value == key for _, value in node.value
    )


def dotted(path: Loc) -> str:
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


MAX_VALUE_CHARS = 200  # of a value shown in an error: a value built of YAML aliases can expand to megabytes
_DEPTH = 2  # levels of a nested value shown; deeper ones are "..."
_ITEMS = 6  # items of a mapping or list shown


def render_value(value: Any) -> str:
    shown = _render(value, _DEPTH)
    return shown if len(shown) <= MAX_VALUE_CHARS else shown[: MAX_VALUE_CHARS - 3] + "..."


def _render(value: Any, depth: int) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(by_alias=True)
    if isinstance(value, (Mapping, list, tuple)) and depth < 0:
        return "{...}" if isinstance(value, Mapping) else "[...]"
    if isinstance(value, Mapping):
        inner = ", ".join(f"{k}: {_render(v, depth - 1)}" for k, v in list(value.items())[:_ITEMS])
        return "{" + inner + (", ..." if len(value) > _ITEMS else "") + "}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_render(v, depth - 1) for v in list(value)[:_ITEMS])
        return "[" + inner + (", ..." if len(value) > _ITEMS else "") + "]"
    if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
        value = value[:MAX_VALUE_CHARS]  # json.dumps of the whole would only be cut afterwards
    try:
        return json.dumps(value)
    except TypeError:
        return repr(value)[:MAX_VALUE_CHARS]


def format_error(source: str, root: yaml.Node | None, data: Any, model: type[BaseModel], error: ErrorDetails) -> str:
    path, line = locate(root, error["loc"])
    where = f"{source}:{line}" if line is not None else source
    name = dotted(path) or "(top level)"
    kind = error["type"]
    if kind == "missing":
        return f"{where}: {name}: required, missing"
    if kind == "extra_forbidden":
        key = str(path[-1]) if path else "?"
        known = known_keys(model, data, path[:-1])
        hint = ""
        close = difflib.get_close_matches(key, known, n=1)
        if close:
            hint = f' did you mean "{close[0]}"?'
        listing = f" known: {', '.join(known)}" if known else ""
        return f"{where}: {name}: unknown key;{hint}{listing}"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    return f"{where}: {name} = {render_value(error['input'])}: {message}"


def known_keys(model: type[BaseModel], data: Any, path: Loc) -> list[str]:
    """The keys a mapping at `path` accepts (YAML names), for "did you mean"."""
    target: Any = model
    for key in path:
        target = _step(target, data, key)
        data = (
            data.get(key)
            if isinstance(data, Mapping)
            else (data[key] if isinstance(data, Sequence) and isinstance(key, int) and key < len(data) else None)
        )
        if target is None:
            return []
    target = _unwrap(target, data)
    if isinstance(target, type) and issubclass(target, BaseModel):
        return sorted(info.alias or name for name, info in target.model_fields.items())
    return []


def _step(annotation: Any, data: Any, key: str | int) -> Any:
    annotation = _unwrap(annotation, data)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation is PolicySpec and key == "params":
            return _policy_params(data)
        for name, info in annotation.model_fields.items():
            if key in (name, info.alias):
                return info.annotation
        return None
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (dict, Mapping) and len(args) == 2:
        return args[1]
    if origin in (list, tuple, Sequence) and args:
        return args[0]
    return None


def _policy_params(spec_data: Any) -> Any:
    try:
        return resolve(spec_data["type"]).Params
    except (KeyError, TypeError, UnknownPolicy):
        return None


def _unwrap(annotation: Any, data: Any) -> Any:
    """Strip Annotated and Optional; pick a tagged union's member by its tag."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
            continue
        if origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) == 1:
                annotation = members[0]
                continue
            tagged = _by_tag(members, data)
            if tagged is not None:
                annotation = tagged
                continue
        return annotation


def _by_tag(members: list[Any], data: Any) -> Any:
    if not isinstance(data, Mapping):
        return None
    for member in members:
        member = _unwrap(member, data)
        if isinstance(member, type) and issubclass(member, BaseModel):
            for name, info in member.model_fields.items():
                if typing.get_origin(info.annotation) is typing.Literal and data.get(name) in typing.get_args(
                    info.annotation
                ):
                    return member
    return None
