"""A small fast upstream for proxy benchmarks when nginx is not installed.

    python bench/fast_upstream.py PORT

aiohttp's low-level server on uvloop: every request gets the same 2-byte
JSON answer, so the proxy in front of it is what a benchmark measures.
"""

import asyncio
import sys

from aiohttp import web

BODY = b"{}"


async def handle(request: web.BaseRequest) -> web.Response:
    await request.read()
    return web.Response(body=BODY, content_type="application/json")


async def serve(port: int) -> None:
    runner = web.ServerRunner(web.Server(handle, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=2048).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(serve(int(sys.argv[1])))
    except ImportError:
        asyncio.run(serve(int(sys.argv[1])))
