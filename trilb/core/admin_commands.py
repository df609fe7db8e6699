"""The admin socket's commands, the decisions: parsing a command line and laying out answers.
No I/O here: :mod:`trilb.admin` reads lines from the socket, runs the commands on the balancer
and writes the answers.

Theory of operation
-------------------

The protocol is HAProxy's runtime API, simplified. A client sends one command per line (``\\n``,
or ``\\r\\n``); every line gets exactly one answer: lines of text followed by one empty line. So
a client may send several commands on one connection and read the answers in order, or send one
command and read until the empty line (or until the server closes). An answer never contains an
empty line before its end, and an error answer is exactly one line starting with
:data:`ERROR_PREFIX`::

    > set server app/s9 weight 50
    < Error: No such server: app/s9.
    <

:func:`parse_command` turns a line (bytes, as received) into one of the command records below, or
raises :class:`CommandError` with the one-line message for the client. The grammar is a table
(:data:`COMMANDS`): each entry has the command's fixed words, its arguments and its help text;
the longest entry whose words start the line decides, and ``help`` prints the table.

A line is at most :data:`MAX_LINE` bytes of printable UTF-8; anything else is refused here, before
any word of it is looked at.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal

import attrs

from .health import Reason

__all__ = [
    "COMMANDS",
    "ERROR_PREFIX",
    "MAX_LINE",
    "STATES",
    "STAT_COLUMNS",
    "Command",
    "CommandError",
    "CommandSpec",
    "DisableHealth",
    "EnableHealth",
    "GetWeight",
    "Help",
    "Quit",
    "Reload",
    "ServerRef",
    "SetState",
    "SetWeight",
    "ShowInfo",
    "ShowServersState",
    "ShowSessions",
    "ShowStat",
    "StatRow",
    "StatValue",
    "answer_lines",
    "check_code",
    "error_answer",
    "format_duration",
    "help_lines",
    "is_error_answer",
    "parse_command",
    "render_csv",
    "render_json",
    "render_table",
]

#: The longest command line accepted, ``\n`` included. The longest command is ``set server
#: BACKEND/SERVER state ready`` with two names; 4 KiB leaves room for very long names while
#: keeping what one client can make the balancer hold small.
MAX_LINE = 4096

#: how an error answer starts (and how ``trilb ctl`` recognises one)
ERROR_PREFIX = "Error: "

#: the operator's states of a server (``set server ... state``), as HAProxy names them
STATES: tuple[str, ...] = ("ready", "drain", "maint")

#: the largest weight (HAProxy's)
MAX_WEIGHT = 256

State = Literal["ready", "drain", "maint"]


class CommandError(Exception):
    """The client's line can't be run; ``str(exc)`` is the one-line message it gets."""


# -- the commands -----------------------------------------------------------------------------


@attrs.frozen
class ServerRef:
    """``BACKEND/SERVER``."""

    backend: str
    server: str

    def __str__(self) -> str:
        return f"{self.backend}/{self.server}"


@attrs.frozen
class Help:
    pass


@attrs.frozen
class Quit:
    pass


@attrs.frozen
class ShowInfo:
    pass


@attrs.frozen
class Reload:
    pass


@attrs.frozen
class ShowStat:
    format: Literal["csv", "json"] = "csv"


@attrs.frozen
class ShowServersState:
    #: only this backend's servers; None: every backend
    backend: str | None = None


@attrs.frozen
class ShowSessions:
    pass


@attrs.frozen
class SetState:
    target: ServerRef
    state: State


@attrs.frozen
class SetWeight:
    target: ServerRef
    value: int
    #: ``value`` is a percentage of the server's configured weight
    percent: bool = False

    def resolve(self, configured: int) -> int:
        """The absolute weight; CommandError when a percentage lands beyond 0-256."""
        if not self.percent:
            return self.value
        weight = (configured * self.value + 50) // 100  # rounded to the nearest
        if weight > MAX_WEIGHT:
            raise CommandError(
                f"Weight {weight} ({self.value}% of {configured}) is out of range 0-{MAX_WEIGHT}."
            )
        return weight


@attrs.frozen
class GetWeight:
    target: ServerRef


@attrs.frozen
class EnableHealth:
    target: ServerRef


@attrs.frozen
class DisableHealth:
    target: ServerRef


Command = (
    Help
    | Quit
    | ShowInfo
    | ShowStat
    | ShowServersState
    | ShowSessions
    | SetState
    | SetWeight
    | GetWeight
    | EnableHealth
    | DisableHealth
    | Reload
)


# -- the grammar --------------------------------------------------------------------------------


def _server_ref(word: str) -> ServerRef:
    backend, slash, server = word.partition("/")
    if not slash or not backend or not server or "/" in server:
        raise CommandError(f"Expected BACKEND/SERVER, got {_show(word)}.")
    return ServerRef(backend, server)


_WEIGHT = re.compile(r"([0-9]{1,4})(%?)")


def _weight(word: str) -> tuple[int, bool]:
    match = _WEIGHT.fullmatch(word)
    if match is None:
        raise CommandError(
            f"Weight must be an integer 0-{MAX_WEIGHT} or a percentage like 50%, got {_show(word)}."
        )
    value, percent = int(match[1]), bool(match[2])
    if not percent and value > MAX_WEIGHT:
        raise CommandError(f"Weight must be 0-{MAX_WEIGHT}, got {value}.")
    return value, percent


def _set_server(args: Sequence[str]) -> Command:
    if len(args) != 3:
        raise _usage("set server")
    target = _server_ref(args[0])
    what, value = args[1], args[2]
    if what == "state":
        if value not in STATES:
            raise CommandError(f"Unknown state {_show(value)}: expected ready, drain or maint.")
        state: State = "ready" if value == "ready" else "drain" if value == "drain" else "maint"
        return SetState(target, state)
    if what == "weight":
        weight, percent = _weight(value)
        return SetWeight(target, weight, percent)
    raise _usage("set server")


def _show_stat(args: Sequence[str]) -> Command:
    if not args:
        return ShowStat("csv")
    if len(args) == 1 and args[0] in ("csv", "json"):
        return ShowStat("json" if args[0] == "json" else "csv")
    raise _usage("show stat")


def _no_args(command: Command) -> Callable[[Sequence[str]], Command]:
    def build(args: Sequence[str]) -> Command:
        if args:
            raise CommandError(f"Unexpected argument {_show(args[0])}. Try 'help'.")
        return command

    return build


def _one_server(kind: type[GetWeight | EnableHealth | DisableHealth], words: str) -> _Build:
    def build(args: Sequence[str]) -> Command:
        if len(args) != 1:
            raise _usage(words)
        return kind(_server_ref(args[0]))

    return build


def _state_of(state: State) -> _Build:
    def build(args: Sequence[str]) -> Command:
        if len(args) != 1:
            raise CommandError("Usage: enable|disable server BACKEND/SERVER.")
        return SetState(_server_ref(args[0]), state)

    return build


def _servers_state(args: Sequence[str]) -> Command:
    if len(args) > 1:
        raise _usage("show servers state")
    return ShowServersState(args[0] if args else None)


_Build = Callable[[Sequence[str]], Command]


@attrs.frozen
class CommandSpec:
    """One entry of the grammar: the fixed words, the arguments' usage, the help text, and the
    function that checks the arguments and builds the command (raising CommandError)."""

    words: tuple[str, ...]
    args: str
    help: str
    build: _Build

    @property
    def usage(self) -> str:
        return " ".join((*self.words, self.args)) if self.args else " ".join(self.words)


def _spec(words: str, args: str, help: str, build: _Build) -> CommandSpec:
    return CommandSpec(tuple(words.split()), args, help, build)


#: every command, in the order ``help`` lists them (aliases have an empty help and are not listed)
COMMANDS: tuple[CommandSpec, ...] = (
    _spec("help", "", "this list", _no_args(Help())),
    _spec("show info", "", "version, uptime, pid, connection counts, frontends, backends",
          _no_args(ShowInfo())),
    _spec("show stat", "[json]", "counters of every frontend, backend and server (CSV or JSON)",
          _show_stat),
    _spec("show servers state", "[BACKEND]", "each server's state, weight and health checks",
          _servers_state),
    _spec("show sessions", "", "the client connections open now", _no_args(ShowSessions())),
    _spec("show sess", "", "", _no_args(ShowSessions())),
    _spec("set server", "BACKEND/SERVER state ready|drain|maint",
          "take a server out (drain: no new requests; maint: none) or put it back", _set_server),
    _spec("set server", "BACKEND/SERVER weight N|N%",
          "change a server's weight: 0-256, or a percentage of its configured weight",
          _set_server),
    _spec("get weight", "BACKEND/SERVER", "a server's current and configured weight",
          _one_server(GetWeight, "get weight")),
    _spec("disable server", "BACKEND/SERVER", "same as: set server ... state maint",
          _state_of("maint")),
    _spec("enable server", "BACKEND/SERVER", "same as: set server ... state ready",
          _state_of("ready")),
    _spec("disable health", "BACKEND/SERVER",
          "stop a server's active checks (it keeps its current UP or DOWN)",
          _one_server(DisableHealth, "disable health")),
    _spec("enable health", "BACKEND/SERVER", "start a server's active checks again",
          _one_server(EnableHealth, "enable health")),
    _spec("reload", "", "read the config file again and switch to it (as SIGHUP does)",
          _no_args(Reload())),
    _spec("quit", "", "close this connection", _no_args(Quit())),
)  # fmt: skip


def _usage(words: str) -> CommandError:
    usages = [spec.usage for spec in COMMANDS if " ".join(spec.words) == words]
    return CommandError(f"Usage: {' | '.join(usages)}.")


def parse_command(line: bytes) -> Command | None:
    """The command on ``line`` (with or without its line end); None for a blank line.

    Raises :class:`CommandError` for a line that is too long, not printable UTF-8 text, not a
    known command, or a command with bad arguments."""
    if len(line) > MAX_LINE:
        raise CommandError(f"Line too long (more than {MAX_LINE} bytes).")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError("Not a command: the line is not UTF-8 text.") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text.replace("\t", " ").isprintable():
        raise CommandError("Not a command: the line has unprintable characters.")
    words = text.split()
    if not words:
        return None
    # the longest match decides ("show servers state" before a "show" that takes arguments);
    # among equals, the first in the table
    best: CommandSpec | None = None
    for spec in COMMANDS:
        size = len(spec.words)
        if tuple(words[:size]) == spec.words and (best is None or size > len(best.words)):
            best = spec
    if best is None:
        raise CommandError(f"Unknown command: {_show(text.strip(), quote=False)}. Try 'help'.")
    return best.build(words[len(best.words) :])


def _show(word: str, *, quote: bool = True, limit: int = 60) -> str:
    """A client's word in a message: shortened, and quoted unless ``quote`` is False."""
    if len(word) > limit:
        word = word[: limit - 3] + "..."
    return repr(word) if quote else word


# -- answers ------------------------------------------------------------------------------------


def help_lines() -> list[str]:
    """``help``'s answer: every command's usage and what it does."""
    listed = [spec for spec in COMMANDS if spec.help]
    width = max(len(spec.usage) for spec in listed)
    return ["Commands:"] + [f"  {spec.usage.ljust(width)}  {spec.help}" for spec in listed]


def answer_lines(lines: Iterable[str]) -> bytes:
    """An answer as sent: its lines (blank ones left out: an empty line ends the answer; line
    ends inside a line become spaces), then the empty line."""
    out = []
    for line in lines:
        line = line.replace("\r", " ").replace("\n", " ")
        if line.strip():
            out.append(line + "\n")
    out.append("\n")
    return "".join(out).encode("utf-8")


def error_answer(message: str) -> bytes:
    return answer_lines([ERROR_PREFIX + message])


def is_error_answer(text: str) -> str | None:
    """The message of an error answer (its text without the final empty line), else None."""
    body = text.rstrip("\n")
    if body.startswith(ERROR_PREFIX) and "\n" not in body:
        return body[len(ERROR_PREFIX) :]
    return None


#: the columns of ``show stat``: HAProxy's names, in HAProxy's order, for the values trilb has
#: (HAProxy's meaning: q = queued requests, s = sessions: cur, max, total; bin/bout: bytes;
#: ereq/econ/eresp: request, connect, response errors; act/bck: active/backup servers UP;
#: chkfail: failed checks; downtime: seconds DOWN; type: 0 frontend, 1 backend, 2 server;
#: rate: new sessions in the last second; hrsp_*: responses by status class; req_tot: requests;
#: check_status: the last check's HAProxy code, last_chk: its details; addr: the server's address;
#: pid: the worker process, 1..N, whose figures the row holds -- empty for the totals, which are
#: all there is without ``global.workers``)
STAT_COLUMNS: tuple[str, ...] = (
    "pxname",
    "svname",
    "qcur",
    "scur",
    "smax",
    "stot",
    "bin",
    "bout",
    "ereq",
    "econ",
    "eresp",
    "status",
    "weight",
    "act",
    "bck",
    "chkfail",
    "downtime",
    "pid",
    "type",
    "rate",
    "check_status",
    "hrsp_1xx",
    "hrsp_2xx",
    "hrsp_3xx",
    "hrsp_4xx",
    "hrsp_5xx",
    "hrsp_other",
    "req_tot",
    "last_chk",
    "addr",
)

StatValue = str | int | None
StatRow = Mapping[str, StatValue]


def render_csv(rows: Iterable[StatRow], columns: Sequence[str] = STAT_COLUMNS) -> list[str]:
    """``show stat``: HAProxy's layout, a ``# pxname,svname,...`` header then one CSV line per
    row (a missing or None value is an empty field, as HAProxy leaves fields that do not
    apply)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    return ["# " + ",".join(columns), *buffer.getvalue().splitlines()]


def render_json(rows: Iterable[StatRow], columns: Sequence[str] = STAT_COLUMNS) -> list[str]:
    """``show stat json``: the same rows as a JSON array of objects (null where the CSV field is
    empty), on one line."""
    return [json.dumps([{c: row.get(c) for c in columns} for row in rows])]


def render_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """Space-separated fields under a ``# name name ...`` header; an empty or None value is
    ``-`` and spaces inside a value become ``_``, so every line splits into len(header) fields."""

    def field(value: object) -> str:
        text = "" if value is None else str(value)
        return re.sub(r"\s", "_", text) or "-"

    return ["# " + " ".join(header), *(" ".join(field(v) for v in row) for row in rows)]


#: HAProxy's ``check_status`` codes, by the reason trilb's checks give
_CHECK_CODES = {
    Reason.L4_OK: "L4OK",
    Reason.L4_CONNECTION: "L4CON",
    Reason.L4_TIMEOUT: "L4TOUT",
    Reason.L6_OK: "L6OK",
    Reason.L6_INVALID: "L6RSP",
    Reason.L6_TIMEOUT: "L6TOUT",
    Reason.L7_OK: "L7OK",
    Reason.L7_STATUS: "L7STS",
    Reason.L7_INVALID: "L7RSP",
    Reason.L7_RESPONSE: "L7RSP",
    Reason.L7_TIMEOUT: "L7TOUT",
    Reason.INTERNAL: "SOCKERR",
}


def check_code(check_status: str) -> str | None:
    """HAProxy's short code (``L7OK``, ``L4CON``...) for a server's ``check_status`` (the
    description of its last check, which starts with the reason); None before any check."""
    for reason, code in _CHECK_CODES.items():
        if check_status.startswith(reason.value):
            return code
    return None


def format_duration(seconds: float) -> str:
    """HAProxy's way to show an uptime: ``2d 3h04m05s``."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}d {hours}h{minutes:02d}m{secs:02d}s"
