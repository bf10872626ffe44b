"""Prometheus metrics of one runtime process.

Each runtime has its own registry (not the global default), so several apps can live in one
test process and ``/metrics`` shows exactly this runtime. Label children are created once
per API and status and cached: the hot path only increments and observes.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class RuntimeMetrics:
    def __init__(self, model: str, version: str) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # "_created" series: no use here
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "hubserve_requests",
            "Requests handled, by API and HTTP status.",
            ["api", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "hubserve_request_seconds",
            "Time from request received to response ready.",
            ["api"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model_seconds = Histogram(
            "hubserve_model_seconds",
            "Time spent in the model per call (one batch).",
            ["api"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "hubserve_batch_rows",
            "Rows per model call.",
            ["api"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_requests = Histogram(
            "hubserve_batch_requests",
            "Requests merged into one model call.",
            ["api"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_rows = Gauge(
            "hubserve_queue_rows",
            "Rows waiting for the model.",
            ["api"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "hubserve_requests_in_flight",
            "Requests being handled.",
            registry=self.registry,
        )
        info = Gauge(
            "hubserve_model_info",
            "The bundle this runtime serves.",
            ["model", "version"],
            registry=self.registry,
        )
        info.labels(model, version).set(1)
        self._requests: dict[tuple[str, int], Counter] = {}
        self._latency: dict[str, Histogram] = {}
        self._batch: dict[str, tuple[Histogram, Histogram, Histogram]] = {}

    def observe_request(self, api: str, status: int, seconds: float) -> None:
        key = (api, status)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = self.requests.labels(api, str(status))
        counter.inc()
        histogram = self._latency.get(api)
        if histogram is None:
            histogram = self._latency[api] = self.request_seconds.labels(api)
        histogram.observe(seconds)

    # -- the batcher's BatchStats protocol --------------------------------------------------

    def observe_batch(self, api: str, rows: int, requests: int, seconds: float) -> None:
        children = self._batch.get(api)
        if children is None:
            children = self._batch[api] = (
                self.model_seconds.labels(api),
                self.batch_rows.labels(api),
                self.batch_requests.labels(api),
            )
        children[0].observe(seconds)
        children[1].observe(rows)
        children[2].observe(requests)

    def set_queue_depth(self, api: str, rows: int) -> None:
        self.queue_rows.labels(api).set(rows)

    def render(self) -> bytes:
        return generate_latest(self.registry)
