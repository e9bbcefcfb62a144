"""Reading a config file: YAML in, a validated ModeshiftConfig or a ConfigError out.

The YAML is parsed once into a node tree (kept for line numbers) and built
into plain data with the safe constructors; a key written twice in one
mapping is an error rather than a silent overwrite. Validation runs with the
context flag that makes durations require a unit. A reload builds a whole
new config this way and hands it over only if it is valid, so a bad file
never replaces a good one.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from configs.errors import format_error
from configs.schema import CROSS_FIELD, ModeshiftConfig
from policies.units import UNITS_REQUIRED

M = TypeVar("M", bound=BaseModel)

# A config is a few kilobytes. The bounds stop a document that would take the process with it (a /reload of
# 352 bytes of nested aliases, a "billion laughs", blocked the event loop for 10 s): checked on the node tree,
# before anything is built from it.
MAX_DOCUMENT_BYTES = 1 << 20
MAX_EXPANDED_NODES = 100_000  # values in the document with every alias expanded

READY_CONFIGS = ("default", "openai-vllm", "kserve-triton", "provider")


class ConfigError(Exception):
    """A config that cannot be used; `lines` holds one error per line."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


class _Loader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice (first on line {seen[key].start_mark.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def parse_config(text: str, source: str = "<config>") -> ModeshiftConfig:
    return parse_document(text, source, ModeshiftConfig, "a mapping of sections (server, lanes, modes, ...)")


def parse_document(text: str, source: str, model: type[M], expected: str) -> M:
    """Any YAML document validated into `model`, with errors naming file, line, field and value."""
    if len(text) > MAX_DOCUMENT_BYTES:
        raise ConfigError([f"{source}: {len(text):,} characters; a config is at most {MAX_DOCUMENT_BYTES:,}"])
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is not None and (expanded := _expanded_size(root)) > MAX_EXPANDED_NODES:
            raise ConfigError(
                [
                    f"{source}:1: the document expands to {expanded:,} values through its aliases (*name); "
                    f"a config holds at most {MAX_EXPANDED_NODES:,}"
                ]
            )
        data = loader.construct_document(root) if root is not None else None
    except RecursionError:  # thousands of nested brackets: the composer itself recurses
        raise ConfigError([f"{source}:1: the document is nested too deeply to be a config"]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else "?"
        raise ConfigError([f"{source}:{line}: YAML syntax: {exc.problem or exc.context}"]) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError([f"{source}:1: expected {expected}"])
    try:
        return model.model_validate(data, context={UNITS_REQUIRED: True})
    except ValidationError as exc:
        errors = [*_without_echoes(exc.errors()), *_cross_field_errors(model, data, exc.errors())]
        raise ConfigError([format_error(source, root, data, model, error) for error in errors]) from None


def _expanded_size(root: yaml.Node) -> int:
    """How many values the node tree holds once every alias is expanded, counted without expanding any: an
    aliased node is one object in the tree, so each node's size is computed once (a cycle counts as huge)."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        sizes[key] = MAX_EXPANDED_NODES + 1  # while being counted: a node that holds itself
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item) for item in node.value)
        sizes[key] = total = min(total, 10 * MAX_EXPANDED_NODES)
        return total

    return size(root)


def _without_echoes(errors: list[Any]) -> list[Any]:
    """Leave out what pydantic adds about a sequence whose items failed ("at least 1 item after validation"):
    the items' own errors say it."""
    return [
        error
        for error in errors
        if not (
            error["type"] == "too_short"
            and any(
                len(other["loc"]) > len(error["loc"]) and other["loc"][: len(error["loc"])] == error["loc"]
                for other in errors
            )
        )
    ]


def _cross_field_errors(model: type[M], data: dict[str, Any], errors: list[Any], rounds: int = 3) -> list[Any]:
    """The cross-field problems (configs.schema: a mode's weights, unknown lanes, ...) of a file whose fields
    are wrong too. Pydantic checks them only once every field is valid, so a file with three errors would show
    them in two passes: they are checked here on the data without the values that failed (each field then
    takes its default), and reported unless they sit under a value that was taken out."""
    if any(error.get("ctx", {}).get(CROSS_FIELD) for error in errors):
        return []  # the fields were valid: the cross-field problems are already there
    pruned, removed = copy.deepcopy(data), []
    for _ in range(rounds):
        removed += [error["loc"] for error in errors if _remove(pruned, error["loc"])]
        try:
            model.model_validate(pruned, context={UNITS_REQUIRED: True})
        except ValidationError as again:
            errors = again.errors()
            cross = [error for error in errors if error.get("ctx", {}).get(CROSS_FIELD)]
            if cross:
                return [error for error in cross if not any(_related(error["loc"], loc) for loc in removed)]
            continue
        return []
    return []


def _related(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """One location is the other or holds it: a problem of a mapping whose member failed, or of that member."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def _remove(data: Any, loc: tuple[Any, ...]) -> bool:
    """Take the value at `loc` out of its mapping; False when there is none (a missing field, a list item)."""
    for key in loc[:-1]:
        if isinstance(data, dict) and key in data:
            data = data[key]
        elif isinstance(data, list) and isinstance(key, int) and 0 <= key < len(data):
            data = data[key]
        else:
            return False
    if isinstance(data, dict) and loc and loc[-1] in data:
        del data[loc[-1]]
        return True
    return False


def load_document(path: str | Path, model: type[M], expected: str) -> M:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    return parse_document(text, str(path), model, expected)


def load_config(path: str | Path) -> ModeshiftConfig:
    return load_document(path, ModeshiftConfig, "a mapping of sections (server, lanes, modes, ...)")


def ready_config_path(name: str) -> Path:
    """The path of a config shipped with modeshift ("default", "openai-vllm", ...)."""
    if name not in READY_CONFIGS:
        raise ValueError(f"no ready config {name!r}; ready: {', '.join(READY_CONFIGS)}")
    return Path(str(resources.files("configs").joinpath(f"{name}.yaml")))
