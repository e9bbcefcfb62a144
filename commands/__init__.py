"""The `modeshift` command line, and the tools that drive a live stack from outside: the demo, replay, profile.

`router/` is the data plane and never imports from here, nor from `simulator/`.
"""
