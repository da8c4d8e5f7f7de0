"""Prometheus metrics of the service, in the text exposition format (version 0.0.4), written by hand.

clip-retrieval's back end exports per-step timings through `prometheus_client`; clipforge does not depend on it,
and the few series a search service needs are simple to write: requests by endpoint, method and status, a latency
histogram per endpoint, searches in flight and waiting, requests refused as busy, and the rows of each index.
Endpoints are labelled by their route template (`/items/{item_id}`), never by the raw path, so that the number of
series stays bounded whatever clients send.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Latency buckets (seconds): a search answers in a millisecond or two, a first text query loads a model.
BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{name}="{_escape(value)}"' for name, value in pairs)
    return "{" + inner + "}" if inner else ""


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Metrics:
    """Counters and histograms updated by `MetricsMiddleware`; `render()` is what GET /metrics returns."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = {}
        self.histograms: dict[str, list[float]] = {}  # endpoint -> per-bucket counts, then sum, then count
        self.started = time.time()

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Count one finished request and its latency under its route template (not the raw path: bounded labels)."""
        with self._lock:
            key = (endpoint, method, str(status))
            self.requests[key] = self.requests.get(key, 0) + 1
            hist = self.histograms.setdefault(endpoint, [0.0] * (len(BUCKETS) + 2))
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    hist[i] += 1
            hist[-2] += seconds
            hist[-1] += 1

    def render(self, gauges: Iterable[tuple[str, str, str, dict[str, str], float]] = ()) -> str:
        """The exposition text; `gauges` adds (name, type, help, labels, value) samples known to the caller."""
        out: list[str] = []
        with self._lock:
            requests = sorted(self.requests.items())
            histograms = sorted((k, list(v)) for k, v in self.histograms.items())
        out += [
            "# HELP clipforge_requests_total HTTP requests answered, by endpoint (route template), method and status.",
            "# TYPE clipforge_requests_total counter",
        ]
        for (endpoint, method, status), count in requests:
            labels = _labels((("endpoint", endpoint), ("method", method), ("status", status)))
            out.append(f"clipforge_requests_total{labels} {count}")
        out += [
            "# HELP clipforge_request_duration_seconds Time to answer a request, by endpoint.",
            "# TYPE clipforge_request_duration_seconds histogram",
        ]
        for endpoint, hist in histograms:
            for bound, count in zip(BUCKETS, hist):
                labels = _labels((("endpoint", endpoint), ("le", _number(bound))))
                out.append(f"clipforge_request_duration_seconds_bucket{labels} {int(count)}")
            labels = _labels((("endpoint", endpoint), ("le", "+Inf")))
            out.append(f"clipforge_request_duration_seconds_bucket{labels} {int(hist[-1])}")
            out.append(f"clipforge_request_duration_seconds_sum{_labels([('endpoint', endpoint)])} {hist[-2]!r}")
            out.append(f"clipforge_request_duration_seconds_count{_labels([('endpoint', endpoint)])} {int(hist[-1])}")
        seen: set[str] = set()
        for name, kind, help_text, labels, value in gauges:
            if name not in seen:
                seen.add(name)
                out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            out.append(f"{name}{_labels(sorted(labels.items()))} {_number(value)}")
        return "\n".join(out) + "\n"


class MetricsMiddleware:
    """Time every HTTP request and count it under its route template (`unmatched` when no route took it)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, clock: Callable[[], float] = time.perf_counter) -> None:
        self.app = app
        self.metrics = metrics
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = self.clock()
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(endpoint, scope.get("method", "?"), status[0], self.clock() - start)
