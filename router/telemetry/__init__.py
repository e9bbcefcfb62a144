"""What the router tells operators: metric families (figures) and their exporters, spans, the decision log, history.

Nothing on the request path waits for any of it.
"""
