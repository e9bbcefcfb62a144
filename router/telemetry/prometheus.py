"""GET /metrics on the admin listener: the router's figures in Prometheus' text format.

The families come from router.telemetry.figures, read at scrape time through a custom
collector; this module only renders them. Names follow Prometheus
conventions: base units (seconds, dollars), `_total` on counters.

What must not live here: which figures exist (router.telemetry.figures).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from router.telemetry.figures import BUCKETS_S, Buckets, Family

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RouterCollector:
    def __init__(self, read: Callable[[], list[Family]]):
        self.read = read

    def collect(self) -> Iterator[Metric]:
        for family in self.read():
            yield _rendered(family)


def _rendered(family: Family) -> Metric:
    labels = list(family.labels)
    if family.kind == "histogram":
        metric = HistogramMetricFamily(family.name, family.help, labels=labels, unit=family.unit)
        for values, point in family.points:
            assert isinstance(point, Buckets)
            buckets = [(f"{b:g}", n) for b, n in zip(BUCKETS_S, point.at_most)] + [("+Inf", point.count)]
            metric.add_metric(list(values), buckets, sum_value=point.sum)
        return metric
    numbers = family.numbers()
    kind = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
    if not labels:
        return kind(family.name, family.help, value=numbers[0][1] if numbers else 0.0)
    plain = kind(family.name, family.help, labels=labels)
    for values, value in numbers:
        plain.add_metric(list(values), value)
    return plain


def exposition(read: Callable[[], list[Family]]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RouterCollector(read))
    return generate_latest(registry)
