"""The live data plane: the aiohttp reverse proxy, its lanes and upstreams, and the process around it.

The request path and its lifecycle live here (server, data-plane server,
proxy, intake, routing, admission, lanes, micro-batcher, upstream client);
async jobs, telemetry and the admin API are subpackages. Nothing here is
imported by the control core (`policies/`), and nothing here imports the
simulator or the command line (`commands/`).
"""
