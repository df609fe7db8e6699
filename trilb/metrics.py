"""The stats as data (sans-IO: a :class:`~trilb.stats.StatsView` in, bytes out).

* :func:`render_json` -- ``/stats.json``: what the dashboard shows.
* :func:`render_metrics` -- ``/metrics``: Prometheus' text format 0.0.4, every name in the
  ``trilb_`` namespace, labelled ``frontend``, ``backend`` and ``server`` (and ``code`` for the
  status class, ``state`` for a server's or worker's state, ``le`` for histogram buckets).

With worker processes (``global.workers``) the figures are the totals over them, and each
worker has its own ``trilb_worker_*`` series (labelled ``worker``, its number) and an entry in
``/stats.json``'s ``workers``; without workers, neither appears.

Frontend sessions are client connections; backend and server sessions are the requests they
serve (as HAProxy counts them for HTTP). Only configured names appear: no version, no
addresses.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable

import attrs

from .stats import (
    WORKER_STATES,
    HistogramSnapshot,
    Recent,
    StatsView,
    TrafficStatistics,
    WorkerStatistics,
)

__all__ = ["METRICS_CONTENT_TYPE", "render_json", "render_metrics"]

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# -- JSON ------------------------------------------------------------------------------------------


def _histogram_json(histogram: HistogramSnapshot) -> dict[str, object]:
    return {
        "bounds": list(histogram.bounds),
        "cumulative": list(histogram.cumulative),  # the last one: +Inf, i.e. the count
        "sum": histogram.sum,
        "count": histogram.count,
    }


def _recent_json(recent: Recent) -> dict[str, object]:
    return {"request_rate": recent.request_rate, "response_time_avg": recent.response_time}


def render_json(view: StatsView) -> bytes:
    """Names and figures as in :class:`~trilb.stats.Statistics` (``traffic`` holds the
    TrafficStatistics fields), states, and the recent rates; no addresses."""
    stats = view.statistics
    state = "STOP" if view.draining else "OPEN"
    document: dict[str, object] = {
        "uptime": view.uptime,
        "refresh": view.refresh,
        "window": view.window,
        "draining": view.draining,
        "frontends": [
            {
                "name": fe.name,
                "state": state,
                **_recent_json(view.get("frontend", fe.name)),
                "traffic": attrs.asdict(fe.traffic),
            }
            for fe in stats.frontends
        ],
        "backends": [
            {
                "name": be.name,
                "state": be.state,
                "weight": be.weight,
                "queued": be.queued,
                **_recent_json(view.get("backend", be.name)),
                "traffic": attrs.asdict(be.traffic),
                "response_time": _histogram_json(be.response_time),
                "servers": [
                    {
                        "name": s.name,
                        "state": s.state,
                        "weight": s.weight,
                        "backup": s.backup,
                        "idle_connections": s.idle_connections,
                        "check_status": s.check_status,
                        "last_change": s.last_change,
                        "downtime": s.downtime,
                        "changes": s.changes,
                        **_recent_json(view.get("server", be.name, s.name)),
                        "traffic": attrs.asdict(s.traffic),
                        "response_time": _histogram_json(s.response_time),
                    }
                    for s in be.servers
                ],
            }
            for be in stats.backends
        ],
    }
    if stats.workers:
        document["workers"] = [_worker_json(worker) for worker in stats.workers]
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def _worker_json(worker: WorkerStatistics) -> dict[str, object]:
    return {
        "index": worker.index,
        "pid": worker.pid,
        "state": worker.state,
        "restarts": worker.restarts,
        "uptime": worker.uptime,
        "traffic": attrs.asdict(worker.traffic),  # its frontends', since its process started
    }


# -- Prometheus ------------------------------------------------------------------------------------

#: a sample's labels, written out once per frontend, backend or server: ``backend="app",...``
Labels = str


def _escape_label(value: str) -> str:
    """A label value for the text format: backslash, double quote and line feed escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> Labels:
    return ",".join(f'{name}="{_escape_label(value)}"' for name, value in labels.items())


def _with(labels: Labels, name: str, value: str) -> Labels:
    """One more label (``value`` is trilb's own: a status class, a state)."""
    return f'{labels},{name}="{value}"'


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


class _Exposition:
    """Metric families in order; each family's HELP and TYPE once, before its samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self, name: str, kind: str, help_text: str, samples: Iterable[tuple[Labels, float]]
    ) -> None:
        help_text = help_text.replace("\\", "\\\\").replace("\n", "\\n")
        self.lines += (f"# HELP {name} {help_text}", f"# TYPE {name} {kind}")
        self.lines += (f"{name}{{{labels}}} {_number(value)}" for labels, value in samples)

    def histogram(
        self, name: str, help_text: str, samples: Iterable[tuple[Labels, HistogramSnapshot]]
    ) -> None:
        self.lines += (f"# HELP {name} {help_text}", f"# TYPE {name} histogram")
        for labels, histogram in samples:
            for bound, count in histogram.buckets():
                le = "+Inf" if math.isinf(bound) else repr(bound)
                self.lines.append(f'{name}_bucket{{{labels},le="{le}"}} {count}')
            self.lines.append(f"{name}_sum{{{labels}}} {_number(histogram.sum)}")
            self.lines.append(f"{name}_count{{{labels}}} {histogram.count}")

    def text(self) -> bytes:
        return ("\n".join(self.lines) + "\n").encode()


Getter = Callable[[TrafficStatistics], int]

#: (name after trilb_frontend_, type, help, value)
_FRONTEND_METRICS: list[tuple[str, str, str, Getter]] = [
    ("current_sessions", "gauge", "Client connections open.", lambda t: t.current_connections),
    ("max_sessions", "gauge", "The most client connections at once.", lambda t: t.peak_connections),
    ("sessions_total", "counter", "Client connections accepted.", lambda t: t.total_connections),
    ("current_requests", "gauge", "Requests in progress.", lambda t: t.current_requests),
    ("max_requests", "gauge", "The most requests at once.", lambda t: t.peak_requests),
    ("requests_total", "counter", "Requests received.", lambda t: t.total_requests),
    ("bytes_in_total", "counter", "Bytes received from clients.", lambda t: t.bytes_in),
    ("bytes_out_total", "counter", "Bytes sent to clients.", lambda t: t.bytes_out),
    (
        "tls_handshake_errors_total",
        "counter",
        "TLS handshakes that failed or timed out.",
        lambda t: t.handshake_errors,
    ),
    (
        "proxy_protocol_errors_total",
        "counter",
        "Connections dropped without a valid PROXY protocol header.",
        lambda t: t.proxy_errors,
    ),
    (
        "denied_requests_total",
        "counter",
        "Requests over a rate limit, answered at once (action deny).",
        lambda t: t.denied_requests,
    ),
    (
        "tarpitted_requests_total",
        "counter",
        "Requests over a rate limit, held before their answer (action tarpit).",
        lambda t: t.tarpitted_requests,
    ),
    (
        "denied_connections_total",
        "counter",
        "Connections closed at once: over max_connections_per_src.",
        lambda t: t.denied_connections,
    ),
]
#: (name after trilb_backend_ / trilb_server_, type, help, value)
_SERVER_METRICS: list[tuple[str, str, str, Getter]] = [
    ("current_sessions", "gauge", "Requests being served.", lambda t: t.current_requests),
    ("max_sessions", "gauge", "The most requests served at once.", lambda t: t.peak_requests),
    ("requests_total", "counter", "Requests sent to the server(s).", lambda t: t.total_requests),
    ("connections_total", "counter", "Connections opened.", lambda t: t.total_connections),
    ("connection_errors_total", "counter", "Failed connections.", lambda t: t.connect_errors),
    ("bytes_in_total", "counter", "Bytes received from the server(s).", lambda t: t.bytes_in),
    ("bytes_out_total", "counter", "Bytes sent to the server(s).", lambda t: t.bytes_out),
]
_STATES = ("UP", "DOWN", "DRAIN", "MAINT")
#: (name after trilb_worker_, type, help, value): a worker's frontends summed
_WORKER_METRICS: list[tuple[str, str, str, Getter]] = [
    (
        "current_sessions",
        "gauge",
        "Client connections open in the worker.",
        lambda t: t.current_connections,
    ),
    (
        "sessions_total",
        "counter",
        "Client connections the worker's process accepted.",
        lambda t: t.total_connections,
    ),
    (
        "current_requests",
        "gauge",
        "Requests in progress in the worker.",
        lambda t: t.current_requests,
    ),
    (
        "requests_total",
        "counter",
        "Requests the worker's process received.",
        lambda t: t.total_requests,
    ),
    (
        "bytes_in_total",
        "counter",
        "Bytes the worker's process received from clients.",
        lambda t: t.bytes_in,
    ),
    (
        "bytes_out_total",
        "counter",
        "Bytes the worker's process sent to clients.",
        lambda t: t.bytes_out,
    ),
]


def _by_class(traffic: TrafficStatistics) -> list[tuple[str, int]]:
    t = traffic
    return [
        ("1xx", t.responses_1xx),
        ("2xx", t.responses_2xx),
        ("3xx", t.responses_3xx),
        ("4xx", t.responses_4xx),
        ("5xx", t.responses_5xx),
        ("other", t.responses_other),
    ]


def render_metrics(view: StatsView) -> bytes:
    """Every frontend, backend and server in Prometheus' text format 0.0.4."""
    stats = view.statistics
    out = _Exposition()
    fes = [(_labels(frontend=fe.name), fe.traffic) for fe in stats.frontends]
    for suffix, kind, help_text, get in _FRONTEND_METRICS:
        out.family(f"trilb_frontend_{suffix}", kind, help_text, ((lb, get(t)) for lb, t in fes))
    out.family(
        "trilb_frontend_responses_total",
        "counter",
        "Responses sent to clients, by status class (other: none was sent).",
        ((_with(lb, "code", code), n) for lb, t in fes for code, n in _by_class(t)),
    )

    bes = [(_labels(backend=be.name), be) for be in stats.backends]
    out.family(
        "trilb_backend_up",
        "gauge",
        "1 while some server is UP (or draining), else 0.",
        ((lb, int(be.state == "UP")) for lb, be in bes),
    )
    out.family(
        "trilb_backend_weight",
        "gauge",
        "The total weight of the servers that are UP.",
        ((lb, be.weight) for lb, be in bes),
    )
    out.family(
        "trilb_backend_current_queue",
        "gauge",
        "Requests waiting for a server slot.",
        ((lb, be.queued) for lb, be in bes),
    )
    for suffix, kind, help_text, get in _SERVER_METRICS:
        samples = ((lb, get(be.traffic)) for lb, be in bes)
        out.family(f"trilb_backend_{suffix}", kind, help_text, samples)
    out.family(
        "trilb_backend_responses_total",
        "counter",
        "Responses to the requests of this backend, by status class.",
        ((_with(lb, "code", code), n) for lb, be in bes for code, n in _by_class(be.traffic)),
    )
    out.histogram(
        "trilb_backend_response_seconds",
        "Time from sending a request to a server to the end of its response.",
        ((lb, be.response_time) for lb, be in bes),
    )

    srvs = [
        (_labels(backend=be.name, server=s.name), s) for be in stats.backends for s in be.servers
    ]
    out.family(
        "trilb_server_up",
        "gauge",
        "1 when the server takes new traffic (UP), else 0 (DOWN, DRAIN or MAINT).",
        ((lb, int(s.state == "UP")) for lb, s in srvs),
    )
    out.family(
        "trilb_server_state",
        "gauge",
        "The server's state (UP, DOWN, DRAIN, MAINT): 1 for the current one.",
        ((_with(lb, "state", state), int(s.state == state)) for lb, s in srvs for state in _STATES),
    )
    out.family(
        "trilb_server_weight", "gauge", "The server's weight.", ((lb, s.weight) for lb, s in srvs)
    )
    for suffix, kind, help_text, get in _SERVER_METRICS:
        samples = ((lb, get(s.traffic)) for lb, s in srvs)
        out.family(f"trilb_server_{suffix}", kind, help_text, samples)
    out.family(
        "trilb_server_idle_connections",
        "gauge",
        "Idle keep-alive connections kept for reuse.",
        ((lb, s.idle_connections) for lb, s in srvs),
    )
    out.family(
        "trilb_server_responses_total",
        "counter",
        "Responses of the server, by status class.",
        ((_with(lb, "code", code), n) for lb, s in srvs for code, n in _by_class(s.traffic)),
    )
    out.family(
        "trilb_server_downtime_seconds_total",
        "counter",
        "Time spent DOWN or in MAINT.",
        ((lb, s.downtime) for lb, s in srvs),
    )
    out.family(
        "trilb_server_last_change_seconds",
        "gauge",
        "Seconds since the server's state last changed (or the balancer started).",
        ((lb, s.last_change) for lb, s in srvs),
    )
    out.family(
        "trilb_server_state_changes_total",
        "counter",
        "Changes of the server's state.",
        ((lb, s.changes) for lb, s in srvs),
    )
    out.histogram(
        "trilb_server_response_seconds",
        "Time from sending a request to the server to the end of its response.",
        ((lb, s.response_time) for lb, s in srvs),
    )
    if stats.workers:
        _worker_metrics(out, stats.workers)
    return out.text()


def _worker_metrics(out: _Exposition, workers: Iterable[WorkerStatistics]) -> None:
    """Each worker's series. Its counters are its process' own: they start over when the
    process is replaced (a counter reset, to Prometheus); the totals above do not."""
    wks = [(_labels(worker=str(w.index)), w) for w in workers]
    out.family(
        "trilb_worker_up",
        "gauge",
        "1 while the worker's process is running, else 0.",
        ((lb, int(w.state == "running")) for lb, w in wks),
    )
    out.family(
        "trilb_worker_state",
        "gauge",
        "The worker's state (" + ", ".join(WORKER_STATES) + "): 1 for the current one.",
        ((_with(lb, "state", st), int(w.state == st)) for lb, w in wks for st in WORKER_STATES),
    )
    out.family(
        "trilb_worker_restarts_total",
        "counter",
        "Times the worker's process was replaced.",
        ((lb, w.restarts) for lb, w in wks),
    )
    out.family(
        "trilb_worker_uptime_seconds",
        "gauge",
        "Seconds since the worker's process started (0 while none runs).",
        ((lb, w.uptime) for lb, w in wks),
    )
    traffic = [(lb, w.traffic) for lb, w in wks]
    for suffix, kind, help_text, get in _WORKER_METRICS:
        samples = ((lb, get(t)) for lb, t in traffic)
        out.family(f"trilb_worker_{suffix}", kind, help_text, samples)
