"""One upstream of known service time in a process of its own, for benchmarks that replay live.

    python bench/modeled_upstream.py PORT '{"slots": 4, "base_s": 0.04, "jitter": 0.2, "seed": 1}'

backends.modeled_server.ModeledServer with the JSON's settings, on uvloop.
Out of the router's process, its timers are not held up by the router's
and the client's work, so it keeps to its service model under load.
"""

import asyncio
import json
import sys

from backends.modeled_server import ModeledServer


async def serve(port: int, settings: dict) -> None:
    await ModeledServer(**settings).start(port=port)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(serve(int(sys.argv[1]), json.loads(sys.argv[2])))
    except ImportError:
        asyncio.run(serve(int(sys.argv[1]), json.loads(sys.argv[2])))
