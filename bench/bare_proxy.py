"""The yardstick: a bare aiohttp reverse proxy, as small as one can honestly write it.

    python bench/bare_proxy.py LISTEN_PORT UPSTREAM_URL

No limits, no lanes, no metrics: read the body, forward, answer. It runs on
uvloop when installed, as modeshift does, so the comparison is of the proxy.
"""

import sys

import aiohttp
from aiohttp import web


async def main(port: int, upstream: str) -> web.AppRunner:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)

    async def forward(request: web.Request) -> web.Response:
        async with session.request(
            request.method, upstream + request.path_qs, headers=request.headers, data=await request.read()
        ) as answer:
            return web.Response(status=answer.status, body=await answer.read(), headers=answer.headers)

    async def close(app: web.Application) -> None:
        await session.close()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    app.on_cleanup.append(close)
    return app


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(
        main(int(sys.argv[1]), sys.argv[2].rstrip("/")),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        print=None,
        access_log=None,
    )
