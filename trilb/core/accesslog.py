"""Access log records and their formatting (sans-IO: strings in, strings out).

The ``haproxy`` format follows HAProxy's ``option httplog`` field order so that tools written for
HAProxy logs read trilb's::

    127.0.0.1:39520 [21/Nov/2026:12:00:00.123] web app/s1 0/0/1/3/4 200 145 - - ---- \
        1/1/0/0/0 0/0 "GET / HTTP/1.1"

(one line; broken here for width)

client ip:port, accept date, frontend, backend/server, timers TR/Tw/Tc/Tr/Ta in ms (-1 = not
reached), status, bytes sent to the client, captured request/response cookies (not captured: - -),
termination state (two chars) plus cookie flags (two chars), connection counts
actconn/feconn/beconn/srv_conn/retries, queues srv/backend, and the request line.
"""

from __future__ import annotations

import json
import time

import attrs

__all__ = ["AccessLogFormatter", "RequestLog", "millis"]


def millis(start: float | None, end: float | None) -> int:
    """Whole milliseconds between two monotonic times, -1 when either was never reached."""
    if start is None or end is None:
        return -1
    return max(0, int((end - start) * 1000))


@attrs.define(slots=True, kw_only=True)
class RequestLog:
    """What the proxy learns about one request as it goes; formatted once at the end."""

    client_ip: str
    client_port: int
    accept_date: float  # wall-clock time the connection (or this request) started, epoch seconds
    frontend: str
    tls: bool = False
    backend: str = "-"
    server: str = "<NOSRV>"
    t_request: int = -1  # TR: head received
    t_queue: int = -1  # Tw: waited for a server slot
    t_connect: int = -1  # Tc: connected to the server
    t_response: int = -1  # Tr: server sent its response head
    t_active: int = -1  # Ta: whole request/response
    status: int = -1
    bytes_out: int = 0  # bytes sent to the client, headers included
    bytes_in: int = 0  # bytes received from the client, headers included
    termination: str = "--"
    actconn: int = 0
    feconn: int = 0
    beconn: int = 0
    srv_conn: int = 0
    retries: int = 0
    srv_queue: int = 0
    backend_queue: int = 0
    request_line: str = "<BADREQ>"
    route: str = "-"  # the route that matched (content switching)
    request_id: str = "-"  # unique_id


class AccessLogFormatter:
    """Formats :class:`RequestLog` records; caches the date text for the current second."""

    __slots__ = ("_cached_date", "_cached_second", "_format")

    def __init__(self, fmt: str = "haproxy") -> None:
        if fmt not in ("haproxy", "json"):
            raise ValueError(f"unknown log format {fmt!r}")
        self._format = fmt
        self._cached_second = -1
        self._cached_date = ""

    def _date(self, epoch: float) -> str:
        second = int(epoch)
        if second != self._cached_second:
            self._cached_second = second
            self._cached_date = time.strftime("%d/%b/%Y:%H:%M:%S", time.localtime(second))
        return f"{self._cached_date}.{int((epoch - second) * 1000):03d}"

    def format(self, r: RequestLog) -> str:
        if self._format == "json":
            return self._json(r)
        frontend = f"{r.frontend}~" if r.tls else r.frontend
        return (
            f"{r.client_ip}:{r.client_port} [{self._date(r.accept_date)}] {frontend} "
            f"{r.backend}/{r.server} "
            f"{r.t_request}/{r.t_queue}/{r.t_connect}/{r.t_response}/{r.t_active} "
            f"{r.status} {r.bytes_out} - - {r.termination}-- "
            f"{r.actconn}/{r.feconn}/{r.beconn}/{r.srv_conn}/{r.retries} "
            f"{r.srv_queue}/{r.backend_queue} "
            # a request id shows where HAProxy shows captured request headers: {...}
            + (f"{{{r.request_id}}} " if r.request_id != "-" else "")
            + json.dumps(r.request_line)
        )

    def _json(self, r: RequestLog) -> str:
        record = attrs.asdict(r)
        record["accept_date"] = self._date(r.accept_date)
        return json.dumps(record, separators=(",", ":"))
