"""Offline replay of traces through the control core, in virtual time.

- traces, generators: trace formats, transforms and generated traffic
- service: lane service models (server, batch API), their file, fitting
- engine: the discrete-event run of the router's request path
- lane_run: one lane during a run (its gate, servers, micro-batcher)
- outcome: per-request results and the figures read from them
- compare: contenders, baselines and the oracle
- report, plots: tables, CSV, decision logs, PNGs
- command: `modeshift simulate`

This package imports configs, policies and backends models, never aiohttp
(`modeshift profile` and `replay` talk HTTP, so they live in router/).
"""
