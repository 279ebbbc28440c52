"""Structured logs (one JSON line per request) and Prometheus metrics.

Log lines carry what an operator needs to explain a decision, and never a
token or a secret: the pipeline passes only the fields listed in LOG_FIELDS.
"""

from __future__ import annotations

import logging
import sys

import structlog
from typing import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

LOG_FIELDS = (
    "request_id", "service", "method", "path", "rule", "decision", "subscriber",
    "status", "upstream_status", "credits", "duration_ms", "code",
)


def configure_logging(level: str = "info") -> None:
    logging.basicConfig(format="%(message)s", stream=sys.stdout, level=level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )


class _StatsCollector:
    """Exposes a dict of running counters (owned by another component) at scrape time."""

    def __init__(self, name: str, doc: str, label: str, stats: Callable[[], Mapping[str, int]]) -> None:
        self.name, self.doc, self.label, self.stats = name, doc, label, stats

    def collect(self):
        family = CounterMetricFamily(self.name, self.doc, labels=[self.label])
        for key, value in sorted(self.stats().items()):
            family.add_metric([key], value)
        yield family


class Metrics:
    """The gateway's Prometheus metrics, in a registry of their own (tests build many apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gateway_requests", "Requests answered, by service, decision and status",
            ["service", "decision", "status"], registry=self.registry,
        )
        self.duration = Histogram(
            "gateway_request_duration_seconds", "Time to the response head, by decision",
            ["decision"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.chain_up = Gauge(
            "gateway_chain_last_success_age_seconds", "Seconds since a chain's RPC last answered",
            ["chain"], registry=self.registry,
        )
        self._watched: set[str] = set()
        self.credits_charged = Counter(
            "gateway_credits_charged", "Credits charged, by service", ["service"], registry=self.registry,
        )

    def watch(self, name: str, doc: str, label: str, stats: Callable[[], Mapping[str, int]]) -> None:
        """Publish counters kept elsewhere (e.g. the plan cache's hits, misses, coalesced calls)."""
        if name not in self._watched:
            self._watched.add(name)
            self.registry.register(_StatsCollector(name, doc, label, stats))
