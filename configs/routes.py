"""Finding a request's route: the longest path prefix that matches whole segments.

Shared by the router (which answers 404 when nothing matches) and the
simulator (which reads each trace request's `route`).
"""

from __future__ import annotations

from configs.schema import RouteConfig


class RoutesByPrefix:
    def __init__(self, routes: tuple[RouteConfig, ...]):
        self.routes = sorted(routes, key=lambda r: len(r.path), reverse=True)

    def find(self, path: str) -> RouteConfig | None:
        """The route for `path`, or None when no prefix matches."""
        for route in self.routes:
            prefix = route.path
            if prefix == "/" or path == prefix or path.startswith(prefix if prefix.endswith("/") else prefix + "/"):
                return route
        return None
