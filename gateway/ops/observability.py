"""Structured logs (one line per request) and Prometheus metrics.

Log lines carry what an operator needs to explain a decision, and never a
token or a secret: the pipeline passes only its scope's `AccessLog` fields.
Logs are JSON by default and a human-readable console format on a terminal.
Writing a log line never fails nor stalls a request: lines are batched per
event-loop iteration and written without blocking (`gateway.ops.log_writer`);
a write that fails (stdout gone, disk full, a pipe full for too long) is
counted and dropped. Records of the standard `logging` module (aiohttp,
asyncio) go through the same renderer, so the output is one JSON object per
line, tracebacks included (as JSON).

The access-log line (`log_request`, one per request) is rendered straight from
its fields when the JSON format is on: the same line, key for key, as structlog's
processors would write, without their per-call overhead (under
`structlog.testing.capture_logs`, or in the console format, it goes through
structlog as any other event).
"""

from __future__ import annotations

import atexit
import datetime
import json
import logging
import sys
from typing import Any, Callable

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.ops.log_writer import LineWriter, batch_fd

__all__ = ["LineWriter", "Metrics", "configure_logging", "count_malformed", "flush_logs", "log_request",
           "log_write_errors"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _SafeLogger:
    """structlog's final logger: every method writes one rendered line through a LineWriter."""

    def __init__(self, writer: LineWriter) -> None:
        self._writer = writer

    def msg(self, message: str) -> None:
        self._writer.write_line(message)

    log = debug = info = warn = warning = error = err = fatal = exception = critical = failure = msg


class _ToStructlog(logging.Handler):
    """Standard `logging` records (aiohttp, asyncio, warnings) rendered by structlog, one line each."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"logger": record.name}
            if record.exc_info and record.exc_info[0] is not None:
                fields["exc_info"] = record.exc_info
            structlog.get_logger(record.name).log(record.levelno, record.getMessage(), **fields)
        except Exception:  # noqa: BLE001 - a log record must never raise into the code that logged it
            pass


_writer: LineWriter | None = None
_access = structlog.get_logger("gateway.access")
_fast: tuple[list, int] | None = None  # (our JSON processors, level): `log_request` renders the line itself


def _fallback(obj: Any) -> Any:
    """What structlog's JSONRenderer writes for a value JSON has no type for."""
    return obj.__structlog__() if hasattr(obj, "__structlog__") else repr(obj)


_encode = json.JSONEncoder(default=_fallback).encode  # built once; json.dumps(default=...) builds one per call
_UTC = datetime.timezone.utc
_counters: tuple[Counter, Counter] | None = None  # (log write errors, malformed requests): see _process_counters


def _process_counters() -> tuple[Counter, Counter]:
    """This process's log write errors and malformed requests, created on first use.

    Why lazily: a counter's storage is chosen when it is created; created in the forked worker, it
    writes to the shared metric files when the gateway runs several workers."""
    global _counters
    if _counters is None:
        _counters = (Counter("gateway_log_write_errors", "Log lines that could not be written (and were dropped)",
                             registry=None),
                     Counter("gateway_malformed_requests", "Malformed requests refused before routing, by code",
                             ["code"], registry=None))
    return _counters


def forget_process_counters() -> None:
    """Before forking workers: each creates its own (see `gateway.ops.worker_metrics`)."""
    global _counters
    _counters = None


def log_write_errors() -> int:
    """Log lines that could not be written by this process (see LineWriter)."""
    return _writer.errors if _writer is not None else 0


def count_malformed(code: str) -> None:
    """One more request refused before it reached any app (bad request line, header, body framing)."""
    _process_counters()[1].labels(code).inc()


def _dropped(n: int) -> None:
    _process_counters()[0].inc(n)


def flush_logs() -> None:
    """Write the lines still batched (a worker whose loop has ended calls this; so does exit)."""
    if _writer is not None:
        _writer.flush()


atexit.register(flush_logs)


def _json_line(logger: Any, name: str, event_dict: dict) -> str:
    """The JSON renderer: structlog's JSONRenderer output (json.dumps' separators, ASCII), one encoder."""
    return _encode(event_dict)


def log_request(fields: dict[str, Any]) -> None:
    """The access-log line of one request (`fields`: the scope's `AccessLog`, never a secret).

    Why a fast path: it is written for every request. With our JSON configuration active, the
    line is built here exactly as the processors below would build it (fields, event, context
    variables not already set, level, timestamp), one dict and one encode."""
    fast = _fast
    processors = structlog.get_config()["processors"]
    # Why both: capture_logs swaps the contents of the same processors list.
    if fast is None or processors is not fast[0] or processors[-1] is not _json_line:
        _access.info("request", **fields)  # console format, level above info, or a test's capture
        return
    if fast[1] > logging.INFO:
        return
    line = dict(fields)
    line["event"] = "request"
    for key, value in structlog.contextvars.get_contextvars().items():
        line.setdefault(key, value)
    line["level"] = "info"
    line["timestamp"] = datetime.datetime.now(tz=_UTC).isoformat().replace("+00:00", "Z")
    assert _writer is not None
    _writer.write_line(_encode(line))


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """`fmt`: json, console, or auto (console when stdout is a terminal, JSON otherwise)."""
    global _writer, _fast
    console = fmt == "console" or (fmt == "auto" and sys.stdout.isatty())
    # JSON: the encoder built once (same output as structlog's JSONRenderer: json.dumps, default=repr).
    renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty()) if console else _json_line
    errors = _writer.errors if _writer is not None else 0
    if _writer is not None:
        _writer.flush()  # lines of the old writer first
    _writer = LineWriter(sys.stdout, batch_fd(sys.stdout), on_dropped=_dropped)
    _writer.errors = errors  # a counter: re-configuring does not reset it
    writer = _writer
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # Why no locals: a frame's local variables can hold a token or a secret.
        (structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False))
         if not console else structlog.processors.format_exc_info),
        renderer,
    ]
    _fast = None if console else (processors, logging.getLevelName(level.upper()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=lambda *args: _SafeLogger(writer),
        cache_logger_on_first_use=True,
    )
    # Why: aiohttp and asyncio log through `logging`; without this their records are multi-line
    # plain text (tracebacks) on stderr, outside the one-JSON-object-per-line contract.
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _ToStructlog)] + [_ToStructlog()]
    root.setLevel(logging.getLevelName(level.upper()))
    logging.captureWarnings(True)


class Metrics:
    """The gateway's Prometheus metrics, in a registry of their own (tests build many apps).

    Every value is counted where its event happens (no callback reads a component's state at
    scrape time): with `workers: N > 1` the values live in files shared by the workers
    (`gateway.ops.worker_metrics`) and the admin listener sums them. Gauges say how: open streams
    add up over the live workers; the settlement lag and the chains' answer age are set by the
    admin listener's worker when scraped (`livemax`: a dead worker's last value does not linger).
    A sum over any label means something: plan checks by result add up to the checks made."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("gateway_requests", "Requests answered, by service, decision and status",
                                ["service", "decision", "status"], registry=r)
        self.duration = Histogram("gateway_request_duration_seconds",
                                  "Whole request, streamed body included, by decision", ["decision"],
                                  registry=r, buckets=LATENCY_BUCKETS)
        self.upstream_duration = Histogram("gateway_upstream_response_seconds",
                                           "From forwarding to the upstream's status line, by service", ["service"],
                                           registry=r, buckets=LATENCY_BUCKETS)
        self.open_streams = Gauge("gateway_open_streams", "Responses being relayed right now", registry=r,
                                  multiprocess_mode="livesum")
        self.credits_reserved = Counter("gateway_credits_reserved", "Credits reserved, by service", ["service"],
                                        registry=r)
        self.credits_charged = Counter("gateway_credits_charged", "Credits charged, by service", ["service"],
                                       registry=r)
        self.credits_settled = Counter("gateway_credits_settled", "Credits burned on chain", registry=r)
        self.settlement_failures = Counter("gateway_settlement_failures", "Settlement failures by reason",
                                           ["reason"], registry=r)
        self.settlement_lag = Gauge("gateway_settlement_lag_seconds",
                                    "Age of the oldest charge not yet burned (0: none pending)", registry=r,
                                    multiprocess_mode="livemax")
        self.chain_up = Gauge("gateway_chain_last_success_age_seconds", "Seconds since a chain's RPC last answered",
                              ["chain"], registry=r, multiprocess_mode="livemax")
        self.plan_checks = Counter("gateway_plan_checks",
                                   "Plan balance checks by result: hit (cache), coalesced (joined a read in "
                                   "flight), shared (another worker's read), miss (read from the chain)",
                                   ["result"], registry=r)
        for result in ("hit", "coalesced", "shared", "miss"):
            self.plan_checks.labels(result)  # present at zero: a dashboard's ratio has a denominator
        self.plan_rpc_calls = Counter("gateway_plan_rpc_calls", "balanceOf calls sent to the chain", registry=r)
        self.plan_rpc_errors = Counter("gateway_plan_rpc_errors", "balanceOf calls that failed", registry=r)
        self.plan_stale = Counter("gateway_plan_stale_answers",
                                  "Failed balanceOf calls answered with a stale positive balance", registry=r)
        self.x402_payments = Counter("gateway_x402_payments",
                                     "x402 payments by service and outcome: accepted (verified and recorded), "
                                     "settled, void (not served: the payer keeps the money), lost (could not "
                                     "pay any more), pending (left to the reconciler)", ["service", "outcome"],
                                     registry=r)
        self.rpc_calls = Counter("gateway_rpc_calls", "JSON-RPC calls by chain, URL (redacted) and outcome "
                                 "(ok, rpc_error, failed)", ["chain", "url", "outcome"], registry=r)
        # Process-wide facts (not one app's): the same counters in every registry of this process.
        for counter in _process_counters():
            r.register(counter)
        # Labelled children, looked up once per label values (`labels()` takes a lock and checks
        # the values on every call): the request counters are updated on every request.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._upstream_children: dict[str, Any] = {}
        self._credit_children: dict[tuple[str, str], Any] = {}
        # What each PlanChecker event increments (a hit is counted on every protected call).
        # "misses" increments nothing: a miss is counted by how it was answered (coalesced, shared,
        # or a chain read: result="miss"), so the results partition the checks.
        self._plan_incs: dict[str, tuple[Callable[[], None], ...]] = {
            "hits": (self.plan_checks.labels("hit").inc,),
            "coalesced": (self.plan_checks.labels("coalesced").inc,),
            "shared": (self.plan_checks.labels("shared").inc,),
            # a check that reads the chain sends exactly one balanceOf call
            "rpc_calls": (self.plan_checks.labels("miss").inc, self.plan_rpc_calls.inc),
            "errors": (self.plan_rpc_errors.inc,),
            "stale": (self.plan_stale.inc,),
        }

    def count_request(self, service: str, decision: str, status: int, seconds: float) -> None:
        """One request answered (the access log's service, decision, status and duration)."""
        children = self._request_children.get((service, decision, status))
        if children is None:
            children = (self.requests.labels(service, decision, str(status)), self.duration.labels(decision))
            if len(self._request_children) < 10_000:  # bounded: statuses are 3 digits, services configured
                self._request_children[(service, decision, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_upstream(self, service: str, seconds: float) -> None:
        """From forwarding to the upstream's status line, by service."""
        child = self._upstream_children.get(service)
        if child is None:
            child = self._upstream_children[service] = self.upstream_duration.labels(service)
        child.observe(seconds)

    def count_plan(self, event: str) -> None:
        """One PlanChecker event (`gateway.credits.plans`): hits, coalesced, shared, rpc_calls, errors, stale."""
        for inc in self._plan_incs.get(event, ()):
            inc()

    def count_credits(self, what: str, service: str, amount: int) -> None:
        """Credits `reserved` (held for a call) or `charged`, by service."""
        child = self._credit_children.get((what, service))
        if child is None:
            family = self.credits_reserved if what == "reserved" else self.credits_charged
            child = family.labels(service)
            if len(self._credit_children) < 10_000:  # bounded: services are configured
                self._credit_children[(what, service)] = child
        child.inc(amount)

    def count_x402(self, service: str, outcome: str) -> None:
        self.x402_payments.labels(service, outcome).inc()

    def count_rpc(self, chain: str, url: str, outcome: str) -> None:
        """One JSON-RPC attempt (`gateway.chain.rpc`): url is already redacted."""
        self.rpc_calls.labels(chain, url, outcome).inc()
