"""Upstreams found by DNS: every A/AAAA record of an upstream's host is one replica of the lane.

A lane with `discovery: {kind: dns, every: 5s}` has its upstream URLs read
as templates: `http://vllm-realtime.default.svc:8000` is resolved every
`every`, and each address it has becomes one upstream with the same scheme,
port and path (a Kubernetes headless Service answers with one record per
ready pod). The lane's pool then holds exactly those (`UpstreamPool.replace`):
a new replica takes calls from the next request on, one that is gone takes
no new calls while the calls it has finish. No reload, no restart.

A lookup that fails (no answer, NXDOMAIN, a nameserver down) keeps the
upstreams the lane has, and is logged once until it works again: a DNS
hiccup must not empty a lane. Until the first lookup answers, the URL as
written is the lane's one upstream (the client resolves it itself).

The lookups run in one task beside the control tick; they read the router's
state each round, so a reload's lanes are picked up as they are. What must
not live here: the pool's rules (policies.path.upstream_pool).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import dns.asyncresolver
import dns.exception
import dns.resolver

from configs.schema import DiscoveryConfig, split_host_port
from router.logs import event
from router.state import RouterState

logger = logging.getLogger("modeshift.discovery")
LOOKUP_TIMEOUT_S = 2.0


class DnsDiscovery:
    def __init__(self, state: Callable[[], RouterState]):
        self.state_now = state
        self._due: dict[str, float] = {}  # lane -> when to look again
        self._failing: dict[str, str] = {}  # lane -> the error last logged
        self._task: asyncio.Task[Any] | None = None

    def start(self) -> None:
        if any(lane.discovery is not None for lane in self.state_now().config.lanes.values()):
            self._task = asyncio.get_running_loop().create_task(self._forever())

    async def _forever(self) -> None:
        clock = asyncio.get_running_loop().time  # lookups are paced in real time, whatever drives control
        while True:
            now = clock()
            state = self.state_now()
            due = []
            for name, lane_config in state.config.lanes.items():
                if lane_config.discovery is None:
                    continue
                at = self._due.setdefault(name, now)
                if at <= now:
                    due.append(name)
                    self._due[name] = now + lane_config.discovery.every_s
            await asyncio.gather(*(self.refresh(state, name) for name in due))
            wait_s = min((at for at in self._due.values()), default=math.inf) - clock()
            await asyncio.sleep(min(max(wait_s, 0.01), 1.0))

    async def refresh(self, state: RouterState, name: str) -> None:
        """Read the lane's records once and make its pool those replicas (kept as they are on a failure)."""
        lane, lane_config = state.lanes[name], state.config.lanes[name]
        assert lane_config.discovery is not None
        try:
            urls = await resolved_urls(lane_config.upstreams, lane_config.discovery)
        except (dns.exception.DNSException, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            if self._failing.get(name) != error:
                self._failing[name] = error
                event(logger, "discovery_failed", logging.WARNING, lane=name, error=error, upstreams="kept as they are")
            return
        if name in self._failing:
            del self._failing[name]
            event(logger, "discovery_answers", logging.INFO, lane=name)
        try:
            added, removed = lane.pool.replace(urls)
        except ValueError:
            return  # no record at all: keep what the lane has (said by the lookup's NoAnswer already)
        if added or removed:
            event(
                logger,
                "upstreams_changed",
                logging.INFO,
                lane=name,
                added=added,
                removed=removed,
                upstreams=len(lane.pool.upstreams),
            )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def resolved_urls(templates: tuple[str, ...], discovery: DiscoveryConfig) -> list[str]:
    """Every URL the templates stand for: one per address of each template's host, in a stable order."""
    resolver = dns.asyncresolver.Resolver(configure=discovery.nameserver is None)
    if discovery.nameserver is not None:
        host, port = split_host_port(discovery.nameserver)
        resolver.nameservers = [host]
        resolver.port = port
    resolver.lifetime = LOOKUP_TIMEOUT_S
    urls: list[str] = []
    for template in templates:
        parts = urlsplit(template)
        host = parts.hostname or ""
        if _is_address(host):
            urls.append(template)  # an address is its own one replica
            continue
        addresses: list[str] = []
        for kind in ("A", "AAAA"):
            try:
                answer = await resolver.resolve(host, kind, search=True)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                if kind == "AAAA" and not addresses:
                    raise  # neither kind of record: the lookup failed
                continue  # one kind only (IPv4 or IPv6): fine
            addresses += sorted(record.address for record in answer)
        for address in addresses:
            netloc = f"[{address}]" if ":" in address else address
            if parts.port is not None:
                netloc += f":{parts.port}"
            urls.append(urlunsplit((parts.scheme, netloc, parts.path, "", "")))
    return urls


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
