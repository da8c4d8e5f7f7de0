"""What every endpoint of one app shares: the served indices, the settings, the concurrency limiter, the metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import ServiceConfig
from .errors import ApiError
from .indices import ServedIndex
from .limits import ConcurrencyLimiter
from .metrics import Metrics


@dataclass
class ServiceState:
    """What every request handler reads: the served indices, the configuration and the concurrency limiter."""

    indices: dict[str, ServedIndex]
    config: ServiceConfig
    limiter: ConcurrencyLimiter
    metrics: Metrics

    def index(self, name: Any) -> ServedIndex:
        """The index called `name` (the first one when None); 404 listing the names otherwise."""
        if name is None or name == "":
            return next(iter(self.indices.values()))
        if not isinstance(name, str):
            raise ApiError(400, f"the index name must be a string, got {name!r}"[:200])
        served = self.indices.get(name)
        if served is None:
            raise ApiError(404, f"no index named {name[:100]!r}; this server has {list(self.indices)}")
        return served

    def gauges(self) -> list[tuple[str, str, str, dict[str, str], float]]:
        """The samples /metrics adds to the request counters."""
        limiter = self.limiter
        out: list[tuple[str, str, str, dict[str, str], float]] = [
            ("clipforge_searches_in_flight", "gauge", "Searches running now.", {}, limiter.active),
            ("clipforge_searches_waiting", "gauge", "Requests waiting for a search slot.", {}, limiter.waiting),
            ("clipforge_search_slots", "gauge", "Searches allowed at once (--max-concurrency).", {}, limiter.limit),
            ("clipforge_busy_rejected_total", "counter", "Requests refused with 503 (busy).", {}, limiter.rejected),
        ]
        for served in self.indices.values():
            labels = {"index": served.name}
            out.append(("clipforge_index_rows", "gauge", "Rows of an index (deleted included).", labels, served.rows))
            live = served.rows - len(served.deleted)
            out.append(("clipforge_index_live_rows", "gauge", "Rows of an index that searches return.", labels, live))
        return out
