"""Access log records and their formatting (sans-IO: strings in, strings out).

The ``haproxy`` format follows HAProxy's ``option httplog`` field order so that tools written for
HAProxy logs read trilb's::

    127.0.0.1:39520 [21/Nov/2026:12:00:00.123] web app/s1 0/0/1/3/4 200 145 - - ---- \
        1/1/0/0/0 0/0 "GET / HTTP/1.1"

(one line; broken here for width)

TCP-mode connections get HAProxy's ``option tcplog`` layout instead (:data:`TCPLOG_TEMPLATE`)::

    127.0.0.1:39522 [21/Nov/2026:12:00:01.456] db mysql/primary 0/1/5230 8123 -- 1/1/1/1/0 0/0

timers Tw/Tc/Tt (queue, connect, whole session) in ms, bytes sent to the client, termination
state, connection counts and queues as above.

client ip:port, accept date, frontend, backend/server, timers TR/Tw/Tc/Tr/Ta in ms (-1 = not
reached), status, bytes sent to the client, captured request/response cookies (not captured: - -),
termination state (two chars) plus cookie flags (two chars), connection counts
actconn/feconn/beconn/srv_conn/retries, queues srv/backend, and the request line.

A ``template`` is HAProxy's ``log-format`` language: text with ``%``-variables (see
:data:`TEMPLATE_VARIABLES`), ``%{+Q}r`` to quote a value, ``%%`` for a percent sign. It is
compiled once; an unknown variable is a :class:`TemplateError` naming it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

import attrs

__all__ = [
    "HAPROXY_TEMPLATE",
    "TCPLOG_TEMPLATE",
    "TEMPLATE_VARIABLES",
    "AccessLogFormatter",
    "RequestLog",
    "TemplateError",
    "millis",
]


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
    mode: str = "http"  # "tcp": a TCP-mode connection, logged in HAProxy's tcplog layout
    t_total: int = -1  # Tt: the whole connection, accept to close (TCP mode)


class TemplateError(ValueError):
    """A ``log.template`` that can't be compiled (unknown variable, bad ``%{...}`` flags)."""


def _request_part(index: int) -> Callable[[RequestLog], str]:
    """Method (0), URI (1) or version (2) of the request line; "-" when it has fewer parts."""

    def get(r: RequestLog) -> str:
        parts = r.request_line.split(" ")
        return parts[index] if len(parts) == 3 else "-"

    return get


def _path(r: RequestLog) -> str:
    uri = _request_part(1)(r)
    return uri.partition("?")[0]


def _query(r: RequestLog) -> str:
    _, mark, query = _request_part(1)(r).partition("?")
    return mark + query if mark else ""


#: the HAProxy ``log-format`` variables trilb fills in: name -> (what it is, value of a record).
#: The dates (``%t``, ``%tr``) are filled in by the formatter (it caches their text).
TEMPLATE_VARIABLES: dict[str, tuple[str, Callable[[RequestLog], object]]] = {
    "ci": ("client IP", lambda r: r.client_ip),
    "cp": ("client port", lambda r: r.client_port),
    "t": ("accept date, dd/Mon/yyyy:HH:MM:SS.mmm (local time)", lambda r: r.accept_date),
    "tr": ("request date (trilb: the same as %t)", lambda r: r.accept_date),
    "Ts": ("accept date, Unix seconds", lambda r: int(r.accept_date)),
    "ft": ("frontend name, with ~ after it for TLS", lambda r: r.frontend + ("~" if r.tls else "")),
    "f": ("frontend name", lambda r: r.frontend),
    "b": ("backend name", lambda r: r.backend),
    "s": ("server name (<NOSRV> when none)", lambda r: r.server),
    "TR": ("ms to receive the request head", lambda r: r.t_request),
    "Tw": ("ms waiting in queues", lambda r: r.t_queue),
    "Tc": ("ms to connect to the server", lambda r: r.t_connect),
    "Tr": ("ms until the server's response head", lambda r: r.t_response),
    "Ta": ("ms the whole request took (active time)", lambda r: r.t_active),
    "Tt": ("ms the whole session took (TCP mode: accept to close)", lambda r: r.t_total),
    "ST": ("status code", lambda r: r.status),
    "B": ("bytes sent to the client, headers included", lambda r: r.bytes_out),
    "U": ("bytes received from the client, headers included", lambda r: r.bytes_in),
    "CC": ("captured request cookie (not captured: -)", lambda r: "-"),
    "CS": ("captured response cookie (not captured: -)", lambda r: "-"),
    "ts": ("termination state, two characters", lambda r: r.termination),
    "tsc": ("termination state and cookie flags, four characters", lambda r: r.termination + "--"),
    "ac": ("active connections, whole process", lambda r: r.actconn),
    "fc": ("connections on the frontend", lambda r: r.feconn),
    "bc": ("requests in progress on the backend", lambda r: r.beconn),
    "sc": ("requests in progress on the server", lambda r: r.srv_conn),
    "rc": ("connect retries", lambda r: r.retries),
    "sq": ("server queue length", lambda r: r.srv_queue),
    "bq": ("backend queue length", lambda r: r.backend_queue),
    "r": ("request line", lambda r: r.request_line),
    "HM": ("request method", _request_part(0)),
    "HU": ("request URI", _request_part(1)),
    "HP": ("request path (URI without query)", _path),
    "HQ": ("query string with its ?, or nothing", _query),
    "HV": ("HTTP version", _request_part(2)),
    "ID": ("request id (unique_id; - when off)", lambda r: r.request_id),
}
_DATE_VARIABLES = frozenset({"t", "tr"})

#: HAProxy's ``option tcplog`` as a template: the line TCP-mode connections get
TCPLOG_TEMPLATE = "%ci:%cp [%t] %ft %b/%s %Tw/%Tc/%Tt %B %ts %ac/%fc/%bc/%sc/%rc %sq/%bq"

#: HAProxy's ``option httplog`` as a template: the same line as ``format = "haproxy"`` (which also
#: shows a request id, where HAProxy shows captured headers)
HAPROXY_TEMPLATE = (
    "%ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B %CC %CS %tsc "
    "%ac/%fc/%bc/%sc/%rc %sq/%bq %{+Q}r"
)

_TOKEN = re.compile(r"%(?:\{(?P<flags>[^}]*)\})?(?P<name>[A-Za-z0-9_]*)")
_FLAGS = frozenset({"+Q", "+E"})

_Part = Callable[[RequestLog], str]


def _quote(text: str) -> str:
    """A double-quoted field with ``"``, ``\\`` and control characters escaped (as JSON does):
    the value stays one field whatever it holds."""
    return json.dumps(text)


class AccessLogFormatter:
    """Formats :class:`RequestLog` records; caches the date text for the current second.

    ``fmt`` is ``"haproxy"`` or ``"json"``; a ``template`` (HAProxy's ``log-format`` language)
    overrides it and raises :class:`TemplateError` when it can't be compiled."""

    __slots__ = ("_cached_date", "_cached_second", "_format", "_parts")

    def __init__(self, fmt: str = "haproxy", template: str | None = None) -> None:
        if fmt not in ("haproxy", "json"):
            raise ValueError(f"unknown log format {fmt!r}")
        self._format = fmt if template is None else "template"
        self._parts: tuple[_Part, ...] = () if template is None else self._compile(template)
        self._cached_second = -1
        self._cached_date = ""

    def _date(self, epoch: float) -> str:
        second = int(epoch)
        if second != self._cached_second:
            self._cached_second = second
            self._cached_date = time.strftime("%d/%b/%Y:%H:%M:%S", time.localtime(second))
        return f"{self._cached_date}.{int((epoch - second) * 1000):03d}"

    def format(self, r: RequestLog) -> str:
        if self._format == "template":
            return "".join([part(r) for part in self._parts])
        if self._format == "json":
            return self._json(r)
        frontend = f"{r.frontend}~" if r.tls else r.frontend
        if r.mode == "tcp":
            return (
                f"{r.client_ip}:{r.client_port} [{self._date(r.accept_date)}] {frontend} "
                f"{r.backend}/{r.server} {r.t_queue}/{r.t_connect}/{r.t_total} "
                f"{r.bytes_out} {r.termination} "
                f"{r.actconn}/{r.feconn}/{r.beconn}/{r.srv_conn}/{r.retries} "
                f"{r.srv_queue}/{r.backend_queue}"
            )
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

    # -- templates ------------------------------------------------------------------------------

    def _compile(self, template: str) -> tuple[_Part, ...]:
        """The template as a list of functions of a record, each giving a piece of the line."""
        if "\n" in template or "\r" in template:
            raise TemplateError("must be one line (no line breaks)")
        parts: list[_Part] = []
        pos = 0
        while (start := template.find("%", pos)) >= 0:
            if start > pos:
                parts.append(_literal(template[pos:start]))
            if template.startswith("%%", start):
                parts.append(_literal("%"))
                pos = start + 2
                continue
            match = _TOKEN.match(template, start)
            assert match is not None  # the pattern matches a lone "%" too
            parts.append(self._variable(match, template))
            pos = match.end()
        if pos < len(template):
            parts.append(_literal(template[pos:]))
        return tuple(parts)

    def _variable(self, match: re.Match[str], template: str) -> _Part:
        name, flags_text = match["name"], match["flags"]
        where = f"at position {match.start() + 1}"
        if not name:
            rest = template[match.end() : match.end() + 1]
            if rest == "[":
                raise TemplateError(f"sample expressions %[...] are not supported ({where})")
            raise TemplateError(f"a % must start a variable ({where}); write %% for a percent sign")
        if name not in TEMPLATE_VARIABLES:
            known = " ".join(f"%{n}" for n in TEMPLATE_VARIABLES)
            raise TemplateError(f"unknown variable %{name} ({where}); known: {known}")
        flags = set(flags_text.split(",")) if flags_text is not None else set()
        if flags - _FLAGS:
            bad = ", ".join(repr(flag) for flag in sorted(flags - _FLAGS))
            raise TemplateError(f"unknown flag {bad} for %{name} ({where}); known: +Q, +E")
        text: _Part
        if name in _DATE_VARIABLES:
            date = self._date
            text = lambda r: date(r.accept_date)  # noqa: E731
        else:
            getter = TEMPLATE_VARIABLES[name][1]
            text = lambda r: str(getter(r))  # noqa: E731

        if "+Q" in flags:
            return lambda r: _quote(text(r))
        if "+E" in flags:
            return lambda r: _quote(text(r))[1:-1]
        return text


def _literal(text: str) -> _Part:
    return lambda r: text
