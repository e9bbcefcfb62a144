"""The records the replicas of a cluster leave in Redis, versioned, and read defensively.

Anything in Redis may have been written by another version of modeshift,
by a replica of another cluster that shares the name, or by hand. Every
record carries `v`; a reader takes a record of its own version and shape
and refuses anything else as a `BadRecord` (the replica counts it, logs it
once, and goes on without it): one malformed record never stops a tick.

    Publication   one replica's figures, each tick        {"v", "at", "shape", "figures"}
    StoredState   the leader's controller state            {"v", "incarnation", "epoch", "seq", "shape", "controller"}
    SentCommand   an operator's command, for the leader    {"v", "id", "kind", "args", "expires_at"}

`shape` is a digest of what the replicas must agree on to share weights:
the lanes and the modes. A replica whose config differs (a lane renamed on
one replica in a rolling change, two clusters with one name on one Redis)
refuses the leader's state and keeps serving with what it has.

What must not live here: Redis commands (router.cluster.shared), what a
replica does with a record (router.cluster.coordinator).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from configs.schema import ModeshiftConfig

VERSION = 1


class BadRecord(ValueError):
    """A record this replica cannot take: not JSON, another version, or not the shape it must have."""


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")  # a field added later is no reason to refuse
    v: int


R = TypeVar("R", bound=_Record)


class Publication(_Record):
    at: float  # wall-clock seconds
    shape: str
    figures: dict[str, Any]


class StoredState(_Record):
    incarnation: str
    epoch: int
    seq: int
    shape: str
    controller: dict[str, Any]
    capacity: dict[str, Any] = {}  # policies.control.capacity.CapacityPlanner.record(): the leader's replicas per lane


class SentCommand(_Record):
    id: str
    kind: str
    args: dict[str, Any]
    expires_at: float  # wall-clock seconds: a leader that takes it later drops it (its sender gave up)


def parse(model: type[R], raw: bytes | str) -> R:
    """The record in `raw`; BadRecord naming what is wrong with it."""
    try:
        record = model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "record"
        raise BadRecord(f"{where}: {first['msg']}") from None
    if record.v != VERSION:
        raise BadRecord(f"version {record.v}; this replica reads version {VERSION}")
    return record


def dump(record: _Record) -> str:
    return record.model_dump_json()


def shape_of(config: ModeshiftConfig) -> str:
    """A digest of the lanes and modes: replicas whose digests differ cannot share weights."""
    agreed = {"lanes": sorted(config.lanes), "modes": config.modes}
    return hashlib.sha256(json.dumps(agreed, sort_keys=True).encode()).hexdigest()[:16]
