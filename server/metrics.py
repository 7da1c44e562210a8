"""Prometheus metrics of one server, in its own registry (several servers in one process never collide).

Requests by method and status code, latency histograms per method, forward batch sizes, queue depth and
capacity, classified products by abstain, feedback by kind, and what is loaded (model fingerprint, index version and size) as info metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from wsgiref.simple_server import WSGIServer

from prometheus_client.registry import Collector
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from shopclip.server.engine import EngineInfo

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("shopclip_requests", "RPCs by method and final status code",
                                ["method", "code"], registry=self.registry)
        self.latency = Histogram("shopclip_request_latency_seconds", "RPC latency by method", ["method"],
                                 buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.batch_size = Histogram("shopclip_batch_size", "products per forward pass",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("shopclip_queue_depth", "products waiting for a forward pass",
                                 registry=self.registry)
        self.model = Info("shopclip_model", "loaded model bundle", registry=self.registry)
        self.index = Info("shopclip_index", "loaded published index", registry=self.registry)
        self.index_size = Gauge("shopclip_index_size", "labelled vectors in the loaded index",
                                registry=self.registry)
        self.index_swaps = Counter("shopclip_index_swaps", "published index versions loaded",
                                   registry=self.registry)
        self.ready = Gauge("shopclip_ready", "1 while health reports SERVING", registry=self.registry)
        self.queue_capacity = Gauge("shopclip_queue_capacity", "products that may wait for a forward pass "
                                    "before RESOURCE_EXHAUSTED (--queue-size)", registry=self.registry)
        self.classified = Counter("shopclip_classified", "products classified, by whether the answer abstained",
                                  ["abstain"], registry=self.registry)
        self.feedback = Counter("shopclip_feedback", "feedback stored: confirm (the predicted code), correct "
                                "(another code), unmatched (no logged prediction to compare)", ["kind"],
                                registry=self.registry)
        self._http: WSGIServer | None = None

    def observe_request(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def track_queue_depth(self, depth: Callable[[], float]) -> None:
        self.queue_depth.set_function(depth)

    def register(self, collectors: Sequence[Collector]) -> None:
        """Expose another component's collectors (the prediction log's) on this server's /metrics."""
        for collector in collectors:
            self.registry.register(collector)

    def set_model(self, info: EngineInfo) -> None:
        versions = info.versions
        self.model.info({"fingerprint": versions.model_fingerprint, "release": versions.model_release,
                         "architecture": info.architecture})

    def set_index(self, version: str, size: int) -> None:
        self.index.info({"version": version})
        self.index_size.set(size)
        self.index_swaps.inc()

    def serve_http(self, host: str, port: int) -> int:
        """Expose /metrics on a background thread; returns the bound port (port 0 picks one)."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
