"""Offline replay of traces through the control core, in virtual time.

The engine, trace loaders, service models and reports arrive with the
simulator issue. This package imports configs, policies and backends models,
never aiohttp.
"""
