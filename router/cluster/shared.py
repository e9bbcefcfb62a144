"""What the replicas of one cluster share in Redis, and the fenced operations on it.

Keys, all under `modeshift:{cluster name}:`:

    leader      "<replica> <epoch>", with the lease as its expiry (PX)
    epoch       a counter: every new leadership takes the next number
    state       JSON {"epoch", "seq", "controller": <the controller's record>}: the weights in force and the
                controller's state, written by the leader only
    replicas    hash replica -> JSON {"at": wall seconds, "figures": <policies.replicas.published>}
    commands    list of JSON commands sent to any replica, for the leader to carry out
    result:<id> the leader's answer to one command (a list the sender waits on)
    decisions   list of the leader's decision records, newest first, trimmed
    reloads     a counter: a /reload on any replica raises it, and every replica reloads its own file

Fencing: taking the lease and writing the state are Lua scripts, atomic in
Redis. A write carries the writer's epoch and is refused unless the lease is
still that writer's and no later epoch has written (`write_state` answers
False: the writer has been replaced and must step down). So two leaders never
both act, whatever the clocks and pauses of the processes.

Every call may raise redis' ConnectionError or TimeoutError (Redis
unreachable); router.cluster.coordinator decides what that means.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

# KEYS: leader, epoch. ARGV: replica, lease ms. The new epoch, or 0 when another replica holds the lease.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local epoch = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. epoch, 'PX', ARGV[2])
return epoch
"""
# KEYS: leader. ARGV: "<replica> <epoch>", lease ms. 1 when renewed, 0 when the lease is not ours any more.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
# KEYS: leader, state. ARGV: "<replica> <epoch>", epoch, the state JSON. 1 when written.
_WRITE_STATE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local stored = redis.call('GET', KEYS[2])
if stored then
  local found = cjson.decode(stored)
  if tonumber(found['epoch']) > tonumber(ARGV[2]) then return 0 end
end
redis.call('SET', KEYS[2], ARGV[3])
return 1
"""
# KEYS: leader. ARGV: "<replica> <epoch>". Give the lease up, if it is still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


class SharedState:
    def __init__(self, url: str, name: str, *, timeout_s: float):
        self.redis = aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.prefix = f"modeshift:{name}:"
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._renew = self.redis.register_script(_RENEW)
        self._write_state = self.redis.register_script(_WRITE_STATE)
        self._release = self.redis.register_script(_RELEASE)

    def key(self, name: str) -> str:
        return self.prefix + name

    async def acquire(self, replica: str, lease_ms: int) -> int:
        """Take the lease when nobody holds it: the new epoch; 0 when another replica leads."""
        return int(await self._acquire(keys=[self.key("leader"), self.key("epoch")], args=[replica, lease_ms]))

    async def renew(self, replica: str, epoch: int, lease_ms: int) -> bool:
        return bool(await self._renew(keys=[self.key("leader")], args=[f"{replica} {epoch}", lease_ms]))

    async def release(self, replica: str, epoch: int) -> None:
        await self._release(keys=[self.key("leader")], args=[f"{replica} {epoch}"])

    async def leader(self) -> tuple[str, int] | None:
        held = await self.redis.get(self.key("leader"))
        if held is None:
            return None
        replica, _, epoch = held.decode().rpartition(" ")
        return replica, int(epoch)

    async def write_state(self, replica: str, epoch: int, seq: int, controller: dict[str, Any]) -> bool:
        """Store the controller's state as the leader of `epoch`; False when that leadership is over."""
        state = json.dumps({"epoch": epoch, "seq": seq, "controller": controller})
        keys = [self.key("leader"), self.key("state")]
        return bool(await self._write_state(keys=keys, args=[f"{replica} {epoch}", epoch, state]))

    async def read_state(self) -> dict[str, Any] | None:
        stored = await self.redis.get(self.key("state"))
        return json.loads(stored) if stored is not None else None

    async def publish(self, replica: str, at_s: float, figures: dict[str, Any]) -> None:
        await self.redis.hset(self.key("replicas"), replica, json.dumps({"at": at_s, "figures": figures}))

    async def publications(self) -> dict[str, dict[str, Any]]:
        """Every replica's latest publication: replica -> {"at", "figures"}."""
        stored = await self.redis.hgetall(self.key("replicas"))
        return {replica.decode(): json.loads(value) for replica, value in stored.items()}

    async def forget(self, replicas: list[str]) -> None:
        if replicas:
            await self.redis.hdel(self.key("replicas"), *replicas)

    async def send_command(self, command: dict[str, Any]) -> None:
        await self.redis.lpush(self.key("commands"), json.dumps(command))

    async def take_commands(self) -> list[dict[str, Any]]:
        """The commands sent since the last take, oldest first (the leader's, once per tick)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrange(self.key("commands"), 0, -1)
            pipe.delete(self.key("commands"))
            taken, _ = await pipe.execute()
        return [json.loads(item) for item in reversed(taken)]

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
        return json.loads(found) if found is not None else None

    async def add_decisions(self, records: list[dict[str, Any]], kept: int) -> None:
        if not records:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lpush(self.key("decisions"), *(json.dumps(record) for record in records))
            pipe.ltrim(self.key("decisions"), 0, kept - 1)
            await pipe.execute()

    async def decisions(self, count: int) -> list[dict[str, Any]]:
        """The leader's newest decision records, oldest first."""
        stored = await self.redis.lrange(self.key("decisions"), 0, count - 1)
        return [json.loads(item) for item in reversed(stored)]

    async def ask_reload(self) -> int:
        return int(await self.redis.incr(self.key("reloads")))

    async def reloads(self) -> int:
        found = await self.redis.get(self.key("reloads"))
        return int(found) if found is not None else 0

    async def close(self) -> None:
        await self.redis.aclose()
