"""Upstreams discovered by DNS through a real router: a loopback DNS server, replicas on 127.0.0.x.

A record added is served within two resolution periods; a record removed
gets no new calls while its call in flight finishes; a failing lookup keeps
the replicas the lane has.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from tests.router.helpers import admin_headers, two_lane_config, until
from tests.servers.dns import DnsServer
from tests.servers.redis import free_port

EVERY_S = 0.1


class Replica:
    """One model server on its own loopback address, all on one port (a Service's pods)."""

    def __init__(self, address: str, port: int):
        self.address, self.port = address, port
        self.calls = 0
        self.hold = asyncio.Event()
        self.hold.set()
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        await self.hold.wait()
        return web.json_response({"served_by": self.address})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.address, self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def test_replicas_come_and_go_with_their_records(start_router, client):
    dns_server = DnsServer()
    await dns_server.start()
    port = free_port()
    first, second = Replica("127.0.0.2", port), Replica("127.0.0.3", port)
    await first.start()
    await second.start()
    try:
        dns_server.records["vllm.test."] = ["127.0.0.2"]
        discovery = {"kind": "dns", "every": f"{int(EVERY_S * 1000)}ms", "nameserver": dns_server.address}
        lane = {"upstreams": [f"http://vllm.test:{port}"], "discovery": discovery}
        router = await start_router(
            two_lane_config([f"http://vllm.test:{port}"], [f"http://vllm.test:{port}"], lanes={"realtime": lane})
        )
        pool = router.runtime.state.lanes["realtime"].pool
        url = f"{router.admin_url}/lanes/realtime/upstreams"
        async with client.put(url, json={"upstreams": ["http://127.0.0.9:1"]}, headers=admin_headers()) as r:
            assert r.status == 409 and (await r.json())["error"]["type"] == "discovered"  # DNS owns this lane
        await until(lambda: [u.base for u in pool.upstreams] == [f"http://127.0.0.2:{port}"], 2 * EVERY_S + 1.0)

        dns_server.records["vllm.test."] = ["127.0.0.2", "127.0.0.3"]  # a replica is added
        await until(lambda: len(pool.upstreams) == 2, 2 * EVERY_S + 1.0)
        for _ in range(10):
            async with client.get(f"{router.url}/x") as response:
                assert response.status == 200
        assert first.calls > 0 and second.calls > 0  # both take calls

        first.hold.clear()  # a call is in flight on the first replica when its record goes
        in_flight = None
        for _ in range(6):  # least in flight, ties round-robin: one of the first tries lands on the first
            sent = asyncio.ensure_future(client.get(f"{router.url}/slow"))
            await asyncio.sleep(0.1)
            if not sent.done():
                in_flight = sent
                break
            (await sent).release()
        assert in_flight is not None and first.hold is not None
        dns_server.records["vllm.test."] = ["127.0.0.3"]
        await until(lambda: len(pool.upstreams) == 1, 2 * EVERY_S + 1.0)
        calls_on_first = first.calls
        for _ in range(10):
            async with client.get(f"{router.url}/x") as response:
                assert (await response.json())["served_by"] == "127.0.0.3"
        assert first.calls == calls_on_first  # no new call for the replica that went
        first.hold.set()
        async with await in_flight as response:
            assert response.status == 200  # its call in flight finished

        del dns_server.records["vllm.test."]  # the lookup fails: the lane keeps its replica
        queries = dns_server.queries
        await until(lambda: dns_server.queries >= queries + 4, 2.0)
        assert [u.base for u in pool.upstreams] == [f"http://127.0.0.3:{port}"]
    finally:
        dns_server.stop()
        await first.stop()
        await second.stop()


async def test_a_replica_listed_before_it_listens_takes_calls_as_soon_as_it_answers(start_router, client):
    """An autoscaler's new pod whose record is published before its model has loaded: the calls it refuses are
    retried on the replica that answers, and once it listens it takes calls within about a second."""
    dns_server = DnsServer()
    await dns_server.start()
    port = free_port()
    up, starting = Replica("127.0.0.2", port), Replica("127.0.0.4", port)
    await up.start()
    try:
        dns_server.records["vllm.test."] = ["127.0.0.2", "127.0.0.4"]
        discovery = {"kind": "dns", "every": f"{int(EVERY_S * 1000)}ms", "nameserver": dns_server.address}
        lane = {"upstreams": [f"http://vllm.test:{port}"], "discovery": discovery}
        router = await start_router(
            two_lane_config([f"http://vllm.test:{port}"], [f"http://vllm.test:{port}"], lanes={"realtime": lane})
        )
        pool = router.runtime.state.lanes["realtime"].pool
        await until(lambda: len(pool.upstreams) == 2, 2 * EVERY_S + 1.0)
        for _ in range(10):  # the second refuses every connection: nothing is lost
            async with client.get(f"{router.url}/x") as response:
                assert response.status == 200 and (await response.json())["served_by"] == "127.0.0.2"
        assert all(u["ejections"] == 0 for u in pool.describe(router.clock()))  # no ejection counted against it
        await starting.start()  # its model has loaded
        listening_s = router.clock()

        async def served_by_the_new_one() -> bool:
            async with client.get(f"{router.url}/x") as response:
                return (await response.json())["served_by"] == "127.0.0.4"

        async with asyncio.timeout(5.0):
            while not await served_by_the_new_one():
                router.clock.advance(0.1)  # the router's clock: the retry is a second of it away
                await asyncio.sleep(0.01)
        assert starting.calls >= 1 and router.clock() - listening_s <= 1.5  # not an ejection's 30 s
    finally:
        dns_server.stop()
        await up.stop()
        await starting.stop()
