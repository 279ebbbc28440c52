"""Structured logs (one line per request) and Prometheus metrics.

Log lines carry what an operator needs to explain a decision, and never a
token or a secret: the pipeline passes only the fields of its `Outcome`.
Logs are JSON by default and a human-readable console format on a terminal.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable, Mapping

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """`fmt`: json, console, or auto (console when stdout is a terminal, JSON otherwise)."""
    console = fmt == "console" or (fmt == "auto" and sys.stdout.isatty())
    renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty()) if console else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks if not console else structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )


class _StatsCollector:
    """Exposes running counters owned by another component, read at scrape time."""

    def __init__(self, name: str, doc: str, labels: list[str], stats: Callable[[], Mapping]) -> None:
        self.name, self.doc, self.labels, self.stats = name, doc, labels, stats

    def collect(self):
        family = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for key, value in sorted(self.stats().items()):
            family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
        yield family


class Metrics:
    """The gateway's Prometheus metrics, in a registry of their own (tests build many apps)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self._watched: set[str] = set()
        self.requests = Counter("gateway_requests", "Requests answered, by service, decision and status",
                                ["service", "decision", "status"], registry=r)
        self.duration = Histogram("gateway_request_duration_seconds",
                                  "Whole request, streamed body included, by decision", ["decision"],
                                  registry=r, buckets=LATENCY_BUCKETS)
        self.upstream_duration = Histogram("gateway_upstream_response_seconds",
                                           "From forwarding to the upstream's status line, by service", ["service"],
                                           registry=r, buckets=LATENCY_BUCKETS)
        self.open_streams = Gauge("gateway_open_streams", "Responses being relayed right now", registry=r)
        self.credits_reserved = Counter("gateway_credits_reserved", "Credits reserved, by service", ["service"],
                                        registry=r)
        self.credits_charged = Counter("gateway_credits_charged", "Credits charged, by service", ["service"],
                                       registry=r)
        self.credits_settled = Counter("gateway_credits_settled", "Credits burned on chain", registry=r)
        self.settlement_failures = Counter("gateway_settlement_failures", "Settlement failures by reason",
                                           ["reason"], registry=r)
        self.settlement_lag = Gauge("gateway_settlement_lag_seconds",
                                    "Age of the oldest charge not yet burned (0: none pending)", registry=r)
        self.chain_up = Gauge("gateway_chain_last_success_age_seconds", "Seconds since a chain's RPC last answered",
                              ["chain"], registry=r)

    def watch(self, name: str, doc: str, label: str, stats: Callable[[], Mapping[str, int]]) -> None:
        """Publish counters kept elsewhere (e.g. the plan cache's hits, misses, coalesced calls)."""
        self._register(name, _StatsCollector(name, doc, [label], stats))

    def watch_rpc(self, readers: Callable[[], Mapping]) -> None:
        """RPC calls by chain, URL (redacted) and outcome (ok, rpc_error, failed)."""

        def stats() -> dict:
            out: dict = {}
            for chain, reader in readers().items():
                for (url, outcome), count in reader.stats.items():
                    out[(chain, url, outcome)] = count
            return out

        self._register("gateway_rpc_calls", _StatsCollector("gateway_rpc_calls", "JSON-RPC calls",
                                                            ["chain", "url", "outcome"], stats))

    def _register(self, name: str, collector: _StatsCollector) -> None:
        if name not in self._watched:  # the callables read the current components: once is enough
            self._watched.add(name)
            self.registry.register(collector)
