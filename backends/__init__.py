"""The far side of a lane: protocol codecs and the reference model server.

Codecs (merge N requests into one upstream batch call and split the answer)
and the PyTorch reference server arrive with the backends issue. This package
may import policies types; it never imports router.
"""
