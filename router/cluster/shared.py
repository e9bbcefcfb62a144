"""What the replicas of one cluster share in Redis, and the fenced operations on it.

Keys, all under `modeshift:{cluster name}:`:

    leader       "<replica> <epoch>", with the lease as its expiry (PX)
    epoch        a counter: every new leadership takes the next number
    incarnation  the id of this history of the cluster: made anew when the epoch counter is missing (a Redis
                 restarted empty), so replicas that remember epoch 4 follow a new leader of epoch 1
    state        router.cluster.records.StoredState: the weights in force and the controller's state, written by
                 the leader only
    replicas     hash replica -> router.cluster.records.Publication
    commands     list of router.cluster.records.SentCommand sent to any replica, for the leader to carry out
    result:<id>  the leader's answer to one command (a list the sender waits on)
    decisions    list of the leader's decision records, newest first, trimmed
    reloads      a counter: a /reload on any replica raises it, and every replica reloads its own file

Fencing: taking the lease and writing the state are Lua scripts, atomic in
Redis. A write carries the writer's epoch and is refused unless the lease is
still that writer's (`write_state` answers False: the writer has been
replaced and must step down). So two leaders never both act, whatever the
clocks and pauses of the processes. A stored state that is not of this
incarnation, is no JSON, or names an epoch the counter never reached was
not written by a leader of this history: the lease holder overwrites it
rather than stepping down before it (an epoch of 999999 written by hand
once caused an election on every tick).

Records are read as raw bytes here and parsed by the caller
(router.cluster.records), which decides what a bad one means. Every call
may raise redis' ConnectionError or TimeoutError (Redis unreachable);
router.cluster.coordinator decides what that means.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, NamedTuple

import redis.asyncio as aioredis

# KEYS: leader, epoch, incarnation. ARGV: replica, lease ms, a fresh incarnation id.
# {the new epoch, the incarnation}, or {0, ""} when another replica holds the lease.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, ''} end
if redis.call('EXISTS', KEYS[2]) == 0 or redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('SET', KEYS[3], ARGV[3])
end
local epoch = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. epoch, 'PX', ARGV[2])
return {epoch, redis.call('GET', KEYS[3])}
"""
# KEYS: leader. ARGV: "<replica> <epoch>", lease ms. 1 when renewed, 0 when the lease is not ours any more.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
# KEYS: leader, state, epoch, incarnation. ARGV: "<replica> <epoch>", epoch, the state JSON. 1 when written.
_WRITE_STATE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local stored = redis.call('GET', KEYS[2])
if stored then
  local ok, found = pcall(cjson.decode, stored)
  if ok and type(found) == 'table' and found['incarnation'] == redis.call('GET', KEYS[4]) then
    local epoch = tonumber(found['epoch'])
    if epoch and epoch > tonumber(ARGV[2]) and epoch <= tonumber(redis.call('GET', KEYS[3]) or '0') then
      return 0
    end
  end
end
redis.call('SET', KEYS[2], ARGV[3])
return 1
"""
# KEYS: leader. ARGV: "<replica> <epoch>". Give the lease up, if it is still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


class Leader(NamedTuple):
    replica: str
    epoch: int
    incarnation: str


class SharedState:
    def __init__(self, url: str, name: str, *, timeout_s: float, max_connections: int | None = None):
        self.redis = aioredis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, max_connections=max_connections
        )
        self.prefix = f"modeshift:{name}:"
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._renew = self.redis.register_script(_RENEW)
        self._write_state = self.redis.register_script(_WRITE_STATE)
        self._release = self.redis.register_script(_RELEASE)

    def key(self, name: str) -> str:
        return self.prefix + name

    async def acquire(self, replica: str, lease_ms: int) -> tuple[int, str]:
        """Take the lease when nobody holds it: (the new epoch, the incarnation); epoch 0 when another leads."""
        keys = [self.key("leader"), self.key("epoch"), self.key("incarnation")]
        epoch, incarnation = await self._acquire(keys=keys, args=[replica, lease_ms, secrets.token_hex(8)])
        return int(epoch), _text(incarnation)

    async def renew(self, replica: str, epoch: int, lease_ms: int) -> bool:
        return bool(await self._renew(keys=[self.key("leader")], args=[f"{replica} {epoch}", lease_ms]))

    async def release(self, replica: str, epoch: int) -> None:
        await self._release(keys=[self.key("leader")], args=[f"{replica} {epoch}"])

    async def leader(self) -> Leader | None:
        """Who holds the lease, with its epoch and the cluster's incarnation; None when nobody does (or the
        lease holds something no replica wrote)."""
        held, incarnation = await self.redis.mget(self.key("leader"), self.key("incarnation"))
        if held is None:
            return None
        replica, _, epoch = _text(held).rpartition(" ")
        if not epoch.isdigit():
            return None
        return Leader(replica, int(epoch), _text(incarnation or b""))

    async def write_state(self, replica: str, epoch: int, state: str) -> bool:
        """Store the state (a StoredState's JSON) as the leader of `epoch`; False when that leadership is over."""
        keys = [self.key("leader"), self.key("state"), self.key("epoch"), self.key("incarnation")]
        return bool(await self._write_state(keys=keys, args=[f"{replica} {epoch}", epoch, state]))

    async def read_state(self) -> bytes | None:
        stored = await self.redis.get(self.key("state"))
        return _raw(stored) if stored is not None else None

    async def publish(self, replica: str, publication: str) -> None:
        await self.redis.hset(self.key("replicas"), replica, publication)

    async def publications(self) -> dict[str, bytes]:
        """Every replica's latest publication, as stored: replica -> a Publication's JSON."""
        stored = await self.redis.hgetall(self.key("replicas"))
        return {_text(replica): _raw(value) for replica, value in stored.items()}

    async def forget(self, replicas: list[str]) -> None:
        if replicas:
            await self.redis.hdel(self.key("replicas"), *replicas)

    async def send_command(self, command: str) -> None:
        await self.redis.lpush(self.key("commands"), command)

    async def withdraw_command(self, command: str) -> bool:
        """Take a command back before a leader took it: True when it was still waiting (it will never run)."""
        return bool(await self.redis.lrem(self.key("commands"), 1, command))

    async def take_commands(self) -> list[bytes]:
        """The commands sent since the last take, oldest first, as stored (the leader's, once per tick)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrange(self.key("commands"), 0, -1)
            pipe.delete(self.key("commands"))
            taken, _ = await pipe.execute()
        return list(reversed(taken))

    async def answer_command(self, command_id: str, answer: dict[str, Any], keep_s: int) -> None:
        key = self.key(f"result:{command_id}")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lpush(key, json.dumps(answer))
            pipe.expire(key, keep_s)
            await pipe.execute()

    async def answer(self, command_id: str) -> dict[str, Any] | None:
        """The leader's answer to a command, once it has given one (asked again until then: no blocking call
        outlives the socket timeout)."""
        found = await self.redis.lpop(self.key(f"result:{command_id}"))
        if found is None:
            return None
        answer = json.loads(_raw(found))
        return answer if isinstance(answer, dict) else {"error": "the answer in Redis is not a JSON object"}

    async def add_decisions(self, records: list[dict[str, Any]], kept: int) -> None:
        if not records:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lpush(self.key("decisions"), *(json.dumps(record) for record in records))
            pipe.ltrim(self.key("decisions"), 0, kept - 1)
            await pipe.execute()

    async def decisions(self, count: int) -> list[bytes]:
        """The leader's newest decision records, oldest first, as stored (JSON objects)."""
        stored = await self.redis.lrange(self.key("decisions"), 0, count - 1)
        return [_raw(record) for record in reversed(stored)]

    async def ask_reload(self) -> int:
        return int(await self.redis.incr(self.key("reloads")))

    async def reloads(self) -> int:
        found = await self.redis.get(self.key("reloads"))
        try:
            return int(found) if found is not None else 0
        except ValueError:
            return 0  # not a counter any replica wrote: no reload is asked

    async def close(self) -> None:
        await self.redis.aclose()


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _raw(value: bytes | str | Any) -> bytes:
    """A stored value as bytes (this client does not decode; the type says it might)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"Redis answered {type(value).__name__} where a stored value was expected")
