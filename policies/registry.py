"""Finding a policy by name, and the spec that names one in a config.

A policy type is found, in this order:
1. a name registered in this process with `register()` (tests, embedding);
2. a built-in name (the table below);
3. an import path `package.module:Class`;
4. a name in the entry-point group `modeshift.policies` of any installed
   distribution (`[project.entry-points."modeshift.policies"]`).

Resolution imports code, so it happens when a config is validated, never on
the control path: a tick only calls `decide()` on objects built beforehand.
"""

from __future__ import annotations

import importlib
import random
from importlib.metadata import entry_points
from typing import Annotated, Any, cast

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationInfo, WithJsonSchema, field_validator
from pydantic_core import PydanticCustomError

from policies.control.protocol import Policy, PolicyParams

ENTRY_POINT_GROUP = "modeshift.policies"

_BUILTINS = {
    "adaptive": "policies.builtin.adaptive:AdaptivePolicy",
    "composite": "policies.builtin.composite:CompositePolicy",
    "cost": "policies.builtin.cost:CostPolicy",
    "fleet": "policies.builtin.fleet:FleetPolicy",
    "latency": "policies.builtin.latency:LatencyPolicy",
    "load": "policies.builtin.load:LoadPolicy",
    "slo": "policies.builtin.slo:SloPolicy",
    "static": "policies.builtin.static:StaticPolicy",
}
_registered: dict[str, type[Policy]] = {}


class UnknownPolicy(LookupError):
    pass


def register(name: str, cls: type[Policy]) -> None:
    """Make `cls` available as policy type `name` in this process."""
    _check_policy_class(name, cls)
    _registered[name] = cls


def known_policies() -> list[str]:
    names = set(_BUILTINS) | set(_registered)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def resolve(type_name: str) -> type[Policy]:
    """The policy class for a type name, import path or entry-point name."""
    if type_name in _registered:
        return _registered[type_name]
    if type_name in _BUILTINS:
        return cast("type[Policy]", _import(_BUILTINS[type_name]))
    if ":" in type_name:
        try:
            cls = _import(type_name)
        except (ImportError, AttributeError) as exc:
            raise UnknownPolicy(f"cannot import {type_name}: {exc}") from None
        _check_policy_class(type_name, cls)
        return cast("type[Policy]", cls)
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=type_name):
        cls = ep.load()
        _check_policy_class(type_name, cls)
        return cast("type[Policy]", cls)
    raise UnknownPolicy(f"unknown policy; known: {', '.join(known_policies())}")


def _import(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def _check_policy_class(name: str, cls: Any) -> None:
    params = getattr(cls, "Params", None)
    if not (
        isinstance(cls, type)
        and isinstance(params, type)
        and issubclass(params, PolicyParams)
        and callable(getattr(cls, "decide", None))
    ):
        raise UnknownPolicy(
            f"{name} is not a policy: it needs a Params model (a PolicyParams subclass) and a decide(snapshot) method"
        )


class PolicySpec(BaseModel):
    """`{type, params}`: which policy, with its validated parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str = Field(description="a built-in name, a package.module:Class path or an entry-point name")
    params: Annotated[SerializeAsAny[PolicyParams], WithJsonSchema({"type": "object"})] = Field(
        default_factory=dict, validate_default=True, description="the policy's own parameters"
    )

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        try:
            resolve(value)
        except UnknownPolicy as exc:
            raise PydanticCustomError("unknown_policy", str(exc)) from None
        return value

    @field_validator("params", mode="before")
    @classmethod
    def _typed_params(cls, value: Any, info: ValidationInfo) -> Any:
        type_name = info.data.get("type")
        if type_name is None:
            return PolicyParams()  # the type's own error is already reported
        params_model = resolve(type_name).Params
        if isinstance(value, params_model):
            return value
        return params_model.model_validate(value if value is not None else {}, context=info.context)

    def build(self, rng: random.Random) -> Policy:
        return resolve(self.type)(self.params, rng)
