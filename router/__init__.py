"""The live data plane and the command line.

The aiohttp reverse proxy (serve), the admin API and the job store arrive
with the live-proxy issue; `router.cli` is the `modeshift` command. Nothing
here is imported by the control core or the simulator.
"""
