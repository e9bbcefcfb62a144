"""The far side of a lane: protocol codecs and the servers that stand there.

- codecs: merge N requests into one upstream batch call and split the answer
- embedder, model_server, openai_api, kserve_api: the PyTorch reference server and its wire shapes
- modeled_server: an upstream of known capacity (slots and a service time) for overload tests and benchmarks
- batch_loop: the asyncio micro-batch loop the reference server and the router share

This package may import policies types; it never imports router.
"""
