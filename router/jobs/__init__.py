"""Async jobs: the API (`Prefer: respond-async`, /v1/jobs, OpenAI's Files and Batches), the durable store, the runner.

Jobs enter the data plane like any request; nothing in `router/` outside
this package reads the store.
"""
