"""The dashboard (``/`` of the stats server), rendered (sans-IO: a view in, HTML out).

In the spirit of HAProxy's stats page: a table of the frontends, then one per backend with a row
per server and the backend's own row; states in colour (UP green, DOWN red, DRAIN orange, MAINT
grey). With worker processes (``global.workers``) these are the totals over them, and a first
table has a row per worker. It works without JavaScript (a ``<noscript>`` meta refresh); with
it, a small script fetches the page every ``refresh`` seconds and swaps the tables in place (no
flicker, the scroll position stays), and says so when an update fails. On a narrow screen (a
phone) every row becomes a card of labelled values. The page loads nothing from elsewhere, and
its Content-Security-Policy (:data:`CONTENT_SECURITY_POLICY`) allows only its own inline script
and style.

Only configured names appear: no version, no host name, no addresses (neither the listeners' nor
the servers'), so the page can be shown to whoever may see the traffic figures. (The workers'
process ids do appear.)
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from collections.abc import Sequence

from .core.health import Reason
from .stats import (
    BackendStatistics,
    FrontendStatistics,
    ServerStatistics,
    StatsView,
    TrafficStatistics,
    WorkerStatistics,
)

__all__ = ["CONTENT_SECURITY_POLICY", "render_html", "short_check_status"]


# -- formatting ------------------------------------------------------------------------------------


def _bytes(value: int) -> str:
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{value} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError(value)


def _duration(seconds: float) -> str:
    """12s, 3m12s, 2h03m, 5d04h: the two largest units."""
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _rate(value: float) -> str:
    if value == 0:
        return "0"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _millis(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1000
    return f"{ms:.1f}" if ms < 10 else f"{ms:.0f}"


_CHECK_CODES = {
    Reason.L4_OK.value: "L4OK",
    Reason.L4_CONNECTION.value: "L4CON",
    Reason.L4_TIMEOUT.value: "L4TOUT",
    Reason.L6_OK.value: "L6OK",
    Reason.L6_INVALID.value: "L6RSP",
    Reason.L6_TIMEOUT.value: "L6TOUT",
    Reason.L7_OK.value: "L7OK",
    Reason.L7_STATUS.value: "L7STS",
    Reason.L7_INVALID.value: "L7RSP",
    Reason.L7_RESPONSE.value: "L7RSP",
    Reason.L7_TIMEOUT.value: "L7TOUT",
    Reason.INTERNAL.value: "INTERNAL",
}
_CHECK_CODE = re.compile(r", code: (\d+)")
_CHECK_DURATION = re.compile(r", check duration: (\d+ms)$")


def short_check_status(status: str) -> str:
    """HAProxy's short form of a check's outcome, "L7STS/500 in 3ms", from the server's
    ``check_status`` ("Layer7 wrong status, code: 500, check duration: 3ms"); "-" without
    checks."""
    if not status:
        return "-"
    code = _CHECK_CODES.get(status.split(",", 1)[0])
    if code is None:
        return status
    if (match := _CHECK_CODE.search(status)) is not None:
        code += f"/{match.group(1)}"
    if (match := _CHECK_DURATION.search(status)) is not None:
        code += f" in {match.group(1)}"
    return code


# -- HTML ------------------------------------------------------------------------------------------

_STYLE = """
:root{color-scheme:light dark;--fg:#1d2329;--bg:#f4f5f7;--card:#fff;--line:#dfe3e8;
--muted:#5d6874;--up:#1e7e34;--down:#c62828;--drain:#d35400;--maint:#6c757d;--head:#eef1f4}
@media (prefers-color-scheme:dark){:root{--fg:#e4e7eb;--bg:#14171a;--card:#1d2126;
--line:#333a42;--muted:#9aa5b1;--head:#262b31}}
*{box-sizing:border-box}
body{margin:0;padding:16px;background:var(--bg);color:var(--fg);
font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:4px 20px;margin:0 0 12px}
h1{font-size:20px;margin:0}
h2{font-size:16px;margin:0 0 8px;display:flex;flex-wrap:wrap;align-items:center;gap:8px}
h2 small{font-weight:normal;color:var(--muted);font-size:13px}
.meta,.legend{color:var(--muted);font-size:13px;margin:0}
.legend span{margin-right:4px}
body.stale .meta{color:var(--down)}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px;
margin:0 0 16px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:13px;font-variant-numeric:tabular-nums}
th,td{padding:4px 6px;text-align:right;white-space:nowrap;border-bottom:1px solid var(--line)}
thead th{background:var(--head);color:var(--muted);font-size:12px;font-weight:600}
thead tr:first-child th{border-bottom:0}
th[colspan]{text-align:center}
.g{border-left:1px solid var(--line)}
th.name,td.name,td.check{text-align:left}
td.check{color:var(--muted);font-size:12px}
tr.total td{font-weight:600;background:var(--head)}
td.name{font-weight:600}
td.name small{font-weight:normal;color:var(--muted)}
.st{display:inline-block;min-width:54px;padding:1px 6px;border-radius:4px;color:#fff;
font-size:12px;font-weight:700;text-align:center}
.st-UP,.st-OPEN{background:var(--up)}.st-DOWN{background:var(--down)}
.st-DRAIN,.st-STOP{background:var(--drain)}.st-MAINT{background:var(--maint)}
tr.row-DOWN td.name{box-shadow:inset 4px 0 var(--down)}
tr.row-DRAIN td.name{box-shadow:inset 4px 0 var(--drain)}
tr.row-MAINT td.name{box-shadow:inset 4px 0 var(--maint)}
tr.row-MAINT td{color:var(--muted)}
@media (max-width:820px){
body{padding:10px}
table,tbody,tr,td{display:block;width:100%}
thead{display:none}
tr{display:grid;grid-template-columns:1fr 1fr;gap:0 14px;border:1px solid var(--line);
border-radius:6px;padding:6px 10px;margin:0 0 8px}
td{display:flex;justify-content:space-between;gap:8px;border:0;padding:2px 0;
white-space:normal;text-align:right}
td::before{content:attr(data-label);color:var(--muted);font-size:12px;text-align:left}
td.name{grid-column:1;font-size:15px;padding:2px 0 4px;box-shadow:none!important}
td.name::before,td.state::before{content:none}
.g{border-left:0}
td:empty{display:none}
tr.total{background:var(--head)}
tr.total td{background:none}
td.state{grid-column:2;justify-content:flex-end;align-items:center}
td.check{grid-column:1/-1}
tr.row-DOWN{border-left:4px solid var(--down)}tr.row-DRAIN{border-left:4px solid var(--drain)}
tr.row-MAINT{border-left:4px solid var(--maint)}
}
"""

# Refreshes the tables in place: fetches this page, swaps <main>; on failure the status line
# says so (red) and the next try follows as usual.
_SCRIPT = """
(function () {
  "use strict";
  var body = document.body;
  var every = Number(body.getAttribute("data-refresh")) || 5000;
  function later() { window.setTimeout(update, every); }
  function say(text) {
    var meta = document.getElementById("updated");
    if (meta) { meta.textContent = text; }
  }
  function update() {
    if (document.hidden) { later(); return; }
    window.fetch(window.location.pathname, {cache: "no-store", credentials: "same-origin"})
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("stats");
        var shown = document.getElementById("stats");
        if (!fresh || !shown) { throw new Error("unexpected page"); }
        shown.replaceWith(document.adoptNode(fresh));
        body.classList.remove("stale");
        say("updated " + new Date().toLocaleTimeString());
      })
      .catch(function (error) {
        body.classList.add("stale");
        say("not updated (" + error.message + "), retrying");
      })
      .then(later);
  }
  later();
}());
"""


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


#: the dashboard's only script and style are its own inline ones (allowed by their hashes);
#: it loads nothing else and may only fetch itself
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src {_csp_hash(_SCRIPT)}; style-src {_csp_hash(_STYLE)}; "
    "img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

Column = tuple[str, str]  # (group, label)

_FRONTEND_COLUMNS: list[Column] = [
    ("", "Frontend"),
    ("", "State"),
    ("Sessions", "Cur"),
    ("Sessions", "Max"),
    ("Sessions", "Total"),
    ("Requests", "Cur"),
    ("Requests", "Max"),
    ("Requests", "Total"),
    ("Requests", "Rate/s"),
    ("Bytes", "In"),
    ("Bytes", "Out"),
    *(("Responses", f"{n}xx") for n in range(1, 6)),
    ("Denied", "Req"),
    ("Denied", "Conn"),
    ("Errors", "TLS"),
]

_BACKEND_COLUMNS: list[Column] = [
    ("", "Server"),
    ("", "State"),
    ("", "Weight"),
    ("Sessions", "Cur"),
    ("Sessions", "Max"),
    ("Sessions", "Total"),
    ("Sessions", "Rate/s"),
    ("", "Queue"),
    ("", "Resp. ms"),
    ("Bytes", "In"),
    ("Bytes", "Out"),
    *(("Responses", f"{n}xx") for n in range(1, 6)),
    ("Errors", "Conn"),
    ("", "Check"),
    ("", "Last change"),
    ("", "Downtime"),
]

_WORKER_COLUMNS: list[Column] = [
    ("", "Worker"),
    ("", "State"),
    ("", "PID"),
    ("", "Restarts"),
    ("", "Uptime"),
    ("Sessions", "Cur"),
    ("Sessions", "Total"),
    ("Requests", "Total"),
    ("Bytes", "In"),
    ("Bytes", "Out"),
]

#: a worker's state in the colours of the others (the page's style, and so its
#: Content-Security-Policy, stay the same): running green, on its way orange, stopped red
_WORKER_COLOURS = {
    "running": "UP",
    "starting": "DRAIN",
    "restarting": "DRAIN",
    "stopping": "STOP",
    "stopped": "DOWN",
}

# a cell: (text, css class, tooltip); text is escaped, except a cell made by _badge (html)
Cell = tuple[str, str, str]


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _badge(state: str) -> Cell:
    return (f'<span class="st st-{_esc(state)}">{_esc(state)}</span>', "state", "")


def _text(text: object, css: str = "", title: str = "") -> Cell:
    return (_esc(text), css, title)


def _head(columns: Sequence[Column]) -> str:
    top: list[str] = []
    bottom: list[str] = []
    index = 0
    while index < len(columns):
        group, label = columns[index]
        css = ' class="name"' if index == 0 or label == "Check" else ""
        if not group:
            top.append(f'<th rowspan="2"{css}>{_esc(label)}</th>')
            index += 1
            continue
        span = 1
        while index + span < len(columns) and columns[index + span][0] == group:
            span += 1
        top.append(f'<th colspan="{span}" class="g">{_esc(group)}</th>')
        for offset, (_, label) in enumerate(columns[index : index + span]):
            bottom.append(
                f'<th class="g">{_esc(label)}</th>' if offset == 0 else f"<th>{_esc(label)}</th>"
            )
        index += span
    return f"<thead><tr>{''.join(top)}</tr><tr>{''.join(bottom)}</tr></thead>"


def _row(columns: Sequence[Column], cells: Sequence[Cell], css: str) -> str:
    assert len(cells) == len(columns)
    parts = []
    previous = ""
    for (group, label), (text, cell_css, title) in zip(columns, cells, strict=True):
        name = f"{group} {label if label.isupper() else label.lower()}" if group else label
        if group and group != previous:  # the first column of a group: a separator
            cell_css = f"{cell_css} g".strip()
        previous = group
        attributes = f' data-label="{_esc(name)}"'
        if cell_css:
            attributes += f' class="{cell_css}"'
        if title:
            attributes += f' title="{_esc(title)}"'
        parts.append(f"<td{attributes}>{text}</td>")
    return f'<tr class="{css}">{"".join(parts)}</tr>'


def _responses(traffic: TrafficStatistics) -> list[Cell]:
    return [
        _text(traffic.responses_1xx),
        _text(traffic.responses_2xx),
        _text(traffic.responses_3xx),
        _text(traffic.responses_4xx),
        _text(traffic.responses_5xx),
    ]


def _bytes_cells(traffic: TrafficStatistics) -> list[Cell]:
    return [
        _text(_bytes(traffic.bytes_in), title=f"{traffic.bytes_in} bytes"),
        _text(_bytes(traffic.bytes_out), title=f"{traffic.bytes_out} bytes"),
    ]


def _frontend_row(frontend: FrontendStatistics, view: StatsView) -> str:
    t = frontend.traffic
    state = "STOP" if view.draining else "OPEN"
    cells = [
        _text(frontend.name, "name"),
        _badge(state),
        _text(t.current_connections),
        _text(t.peak_connections),
        _text(t.total_connections),
        _text(t.current_requests),
        _text(t.peak_requests),
        _text(t.total_requests),
        _text(_rate(view.get("frontend", frontend.name).request_rate)),
        *_bytes_cells(t),
        *_responses(t),
        _text(
            t.denied_requests + t.tarpitted_requests,
            title=f"{t.denied_requests} denied, {t.tarpitted_requests} tarpitted (rate_limit)",
        ),
        _text(t.denied_connections, title="over max_connections_per_src"),
        _text(t.handshake_errors),
    ]
    return _row(_FRONTEND_COLUMNS, cells, f"row-{state}")


def _server_row(backend: BackendStatistics, server: ServerStatistics, view: StatsView) -> str:
    t = server.traffic
    recent = view.get("server", backend.name, server.name)
    name = _esc(server.name) + (" <small>backup</small>" if server.backup else "")
    cells = [
        (name, "name", ""),
        _badge(server.state),
        _text(server.weight),
        _text(t.current_requests),
        _text(t.peak_requests),
        _text(t.total_requests),
        _text(_rate(recent.request_rate)),
        _text("-"),
        _text(_millis(recent.response_time)),
        *_bytes_cells(t),
        *_responses(t),
        _text(t.connect_errors),
        _text(short_check_status(server.check_status), "check", server.check_status),
        _text(_duration(server.last_change), title=f"{server.changes} changes"),
        _text(_duration(server.downtime)),
    ]
    return _row(_BACKEND_COLUMNS, cells, f"row-{server.state}")


def _backend_row(backend: BackendStatistics, view: StatsView) -> str:
    t = backend.traffic
    recent = view.get("backend", backend.name)
    cells = [
        _text("Backend", "name"),
        _badge(backend.state),
        _text(backend.weight),
        _text(t.current_requests),
        _text(t.peak_requests),
        _text(t.total_requests),
        _text(_rate(recent.request_rate)),
        _text(backend.queued),
        _text(_millis(recent.response_time)),
        *_bytes_cells(t),
        *_responses(t),
        _text(t.connect_errors),
        _text("", "check"),
        _text(""),
        _text(""),
    ]
    return _row(_BACKEND_COLUMNS, cells, f"total row-{backend.state}")


def _backend_section(backend: BackendStatistics, view: StatsView) -> str:
    up = sum(1 for s in backend.servers if s.state == "UP")
    rows = "".join(_server_row(backend, server, view) for server in backend.servers)
    return (
        f"<section><h2>Backend {_esc(backend.name)} {_badge(backend.state)[0]}"
        f"<small>{up} of {len(backend.servers)} servers UP</small></h2>"
        f'<div class="scroll"><table>{_head(_BACKEND_COLUMNS)}'
        f"<tbody>{rows}{_backend_row(backend, view)}</tbody></table></div></section>"
    )


def _worker_row(worker: WorkerStatistics) -> str:
    t = worker.traffic
    colour = _WORKER_COLOURS.get(worker.state, "DOWN")
    running = worker.pid is not None
    cells = [
        _text(f"Worker {worker.index}", "name"),
        (f'<span class="st st-{colour}">{_esc(worker.state)}</span>', "state", ""),
        _text(worker.pid if running else "-"),
        _text(worker.restarts),
        _text(_duration(worker.uptime) if running else "-"),
        _text(t.current_connections),
        _text(t.total_connections),
        _text(t.total_requests),
        *_bytes_cells(t),
    ]
    return _row(_WORKER_COLUMNS, cells, f"row-{colour}")


def _workers_section(workers: Sequence[WorkerStatistics]) -> str:
    """A row per worker process, with its own figures (since its process started)."""
    if not workers:
        return ""
    running = sum(1 for w in workers if w.state == "running")
    rows = "".join(_worker_row(worker) for worker in workers)
    return (
        f"<section><h2>Workers <small>{running} of {len(workers)} running</small></h2>"
        f'<div class="scroll"><table>{_head(_WORKER_COLUMNS)}<tbody>{rows}</tbody>'
        "</table></div></section>"
    )


def render_html(view: StatsView) -> bytes:
    stats = view.statistics
    frontends = "".join(_frontend_row(fe, view) for fe in stats.frontends)
    draining = " · draining" if view.draining else ""
    main = (
        '<main id="stats">'
        f'<p class="meta">up {_duration(view.uptime)}{draining} · rates and response times '
        f'over the last {view.window:g}s · <span id="updated">refreshes every '
        f"{view.refresh:g}s</span></p>"
        + _workers_section(stats.workers)
        + "<section><h2>Frontends</h2>"
        f'<div class="scroll"><table>{_head(_FRONTEND_COLUMNS)}<tbody>{frontends}</tbody>'
        "</table></div></section>"
        + "".join(_backend_section(backend, view) for backend in stats.backends)
        + "</main>"
    )
    legend = "".join(
        f'<span class="st st-{state}">{state}</span>' for state in ("UP", "DOWN", "DRAIN", "MAINT")
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        '<link rel="icon" href="data:,">'
        "<title>trilb statistics</title>"
        f"<style>{_STYLE}</style>"
        f'<noscript><meta http-equiv="refresh" content="{view.refresh:g}"></noscript>'
        f'</head><body data-refresh="{round(view.refresh * 1000)}">'
        f'<header><h1>trilb statistics</h1><p class="legend">{legend}</p></header>'
        f"{main}<script>{_SCRIPT}</script></body></html>\n"
    ).encode()
