"""The admin socket: HAProxy's runtime API on a unix socket, for ``trilb ctl`` (or socat).

::

    serve_admin()                   in the balancer's nursery: the accept loop
    └── one task per admin connection (at most MAX_CLIENTS at once)

What a line means and how answers are laid out is decided in :mod:`trilb.core.admin_commands`;
this module reads lines, runs the commands through the balancer's public methods (the embedding
API: whatever the socket can do, a program embedding trilb can do too) and writes the answers.

Nothing a client sends can hurt the balancer: a line is at most
:data:`~trilb.core.admin_commands.MAX_LINE` bytes (a longer one is answered with an error and the
connection closed), each line must arrive within :data:`IDLE_TIMEOUT`, each answer be taken
within :data:`SEND_TIMEOUT`, a connection carries at most :data:`MAX_COMMANDS` commands, at most
:data:`MAX_CLIENTS` connections are served at once, and every connection's errors end that
connection only.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Iterable
from typing import TYPE_CHECKING

import trio

from ._version import __version__
from .config import AdminConfig
from .core.admin_commands import (
    MAX_LINE,
    Command,
    CommandError,
    DisableHealth,
    EnableHealth,
    GetWeight,
    Help,
    Quit,
    Reload,
    ServerRef,
    SetState,
    SetWeight,
    ShowInfo,
    ShowServersState,
    ShowSessions,
    ShowStat,
    StatRow,
    answer_lines,
    check_code,
    error_answer,
    format_duration,
    help_lines,
    parse_command,
    render_csv,
    render_json,
    render_table,
)
from .errors import StartupError, TrilbError
from .net import BACKLOG, TCPListener, TCPStream
from .stats import Statistics, TrafficStatistics, WorkerStatistics

if TYPE_CHECKING:
    from .balancer import Balancer, ServerState
    from .config import Config, ServerConfig
    from .logsink import LogSink

__all__ = [
    "IDLE_TIMEOUT",
    "MAX_CLIENTS",
    "MAX_COMMANDS",
    "SEND_TIMEOUT",
    "serve_admin",
    "stat_rows",
    "worker_info",
]

#: admin connections served at once: an operator, a script or two, a monitoring agent. More get a
#: one-line error and are closed at once, so a runaway script cannot hold the balancer's memory.
MAX_CLIENTS = 16

#: a command line must arrive complete within this (HAProxy's ``stats timeout`` default); an
#: idle or stalled client is then told so and closed
IDLE_TIMEOUT = 10.0

#: a client must take each answer within this (a big ``show stat`` goes out in many writes)
SEND_TIMEOUT = 10.0

#: commands on one connection; then it is closed (scripts reconnect; nothing lasts forever)
MAX_COMMANDS = 1000

#: after accept() fails (EMFILE...), wait this long before trying again
_ACCEPT_BACKOFF = 0.1


async def serve_admin(
    server: AdminConnections,
    config: AdminConfig,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin socket with ``server`` (an :class:`AdminServer` for a balancer) until
    cancelled; ``task_status.started`` gets the socket's path once it listens.

    Cancellation: the accept loop and every admin connection stop at once.
    Resource handling: the listener and connections are closed, and the socket file removed (if
    it is still ours: a newer process may have taken the path over), however it ends.
    Error handling: :class:`~trilb.errors.StartupError` when the socket can't be made (no such
    directory, a file that is not a socket in the way); afterwards one connection's errors end
    that connection only, and are logged.
    """
    listener, identity = open_admin_socket(config.socket, config.mode)
    try:
        async with trio.open_nursery() as nursery:
            server.log.info(f"admin socket listening on {config.socket}")
            task_status.started(config.socket)
            await server.accept_loop(listener, nursery)
    finally:
        listener.close()
        _remove_if_ours(config.socket, identity)


def open_admin_socket(path: str, mode: int) -> tuple[TCPListener, tuple[int, int]]:
    """A listening unix socket at ``path`` with file mode ``mode``, and the socket file's
    identity (device, inode). A stale socket file is replaced, any other file is an error.

    The mode is set between ``bind`` and ``listen``: until then connections are refused, so
    nobody the mode excludes can connect in between (the umask does not matter)."""
    key = "admin.socket"
    try:
        existing = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StartupError(f"{key}: cannot use {path}: {exc.strerror or exc}") from None
    else:
        if not stat.S_ISSOCK(existing.st_mode):
            raise StartupError(f"{key}: {path} exists and is not a socket; not replacing it")
        try:
            os.unlink(path)  # a socket left behind (or another trilb's: this one takes over)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StartupError(f"{key}: cannot replace {path}: {exc.strerror or exc}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, mode)
        sock.listen(BACKLOG)
        info = os.stat(path)
    except OSError as exc:
        sock.close()
        raise StartupError(f"{key}: cannot listen on {path}: {exc.strerror or exc}") from None
    return TCPListener(sock), (info.st_dev, info.st_ino)


def _remove_if_ours(path: str, identity: tuple[int, int]) -> None:
    with contextlib.suppress(OSError):
        info = os.lstat(path)
        if (info.st_dev, info.st_ino) == identity:
            os.unlink(path)


class AdminConnections:
    """The admin socket's connections: lines in, :meth:`answer`'s answers out. What the
    commands do is a subclass's: :class:`AdminServer` runs them on a balancer, the master
    process of ``trilb serve`` on its workers (:mod:`trilb.master_admin`)."""

    def __init__(self, log: LogSink) -> None:
        self.log = log
        #: connections being served now
        self.clients = 0

    async def accept_loop(self, listener: TCPListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream, _ = await listener.accept()
            except trio.ClosedResourceError:
                return
            except OSError as exc:
                # out of file descriptors, or a client gone before its accept: the admin
                # socket is not worth stopping the balancer for
                self.log.error(f"admin socket: accept failed: {exc}; retrying")
                await trio.sleep(_ACCEPT_BACKOFF)
                continue
            if self.clients >= MAX_CLIENTS:
                # A new socket's send buffer takes these few bytes at once: no wait needed.
                with contextlib.suppress(OSError):
                    stream.sock.send(error_answer("Too many admin connections; try again later."))
                stream.close()
                continue
            self.clients += 1
            nursery.start_soon(self.serve_client, stream)

    async def serve_client(self, stream: TCPStream) -> None:
        """One admin connection: a line, its answer, and again (the error boundary of one
        connection)."""
        try:
            reader = _LineReader(stream)
            for _ in range(MAX_COMMANDS):
                line = None
                try:
                    with trio.move_on_after(IDLE_TIMEOUT) as idle:
                        line = await reader.next_line()
                except _LineTooLong:
                    await _send(stream, error_answer(f"Line too long (max {MAX_LINE} bytes)."))
                    return
                if idle.cancelled_caught:
                    message = f"No complete command in {IDLE_TIMEOUT:g}s; closing."
                    await _send(stream, error_answer(message))
                    return
                if line is None:  # the client closed its side
                    return
                answer, more = await self.answer(line)
                if not await _send(stream, answer) or not more:
                    return
            message = f"Too many commands on one connection (max {MAX_COMMANDS}); closing."
            await _send(stream, error_answer(message))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        except Exception as exc:  # noqa: BLE001 - the error boundary of one admin connection
            self.log.error(f"admin socket: connection ended by an internal error: {exc!r}")
        finally:
            self.clients -= 1
            stream.close()

    async def answer(self, line: bytes) -> tuple[bytes, bool]:
        """The answer to one line, and whether the connection goes on (the error boundary of
        one command: a CommandError is its answer, a bug is logged and answered)."""
        try:
            command = parse_command(line)
            if command is None:
                return answer_lines([]), True
            if isinstance(command, Quit):
                return b"", False
            return await self.respond(command, line), True
        except CommandError as exc:
            return error_answer(str(exc)), True
        except Exception as exc:  # noqa: BLE001 - a bug in one command must not end the balancer
            self.log.error(f"admin socket: command {line[:80]!r} failed: {exc!r}")
            return error_answer(f"Internal error: {exc!r}."), True

    async def respond(self, command: Command, line: bytes) -> bytes:
        """The answer, as sent, to a command (other than ``quit``); CommandError when it
        can't be done."""
        raise NotImplementedError


class AdminServer(AdminConnections):
    """The admin connections of one balancer, and the commands run for them."""

    def __init__(self, balancer: Balancer) -> None:
        super().__init__(balancer.log)
        self.lb = balancer

    async def respond(self, command: Command, line: bytes) -> bytes:
        if isinstance(command, Reload):
            return answer_lines(await self.reload())
        return answer_lines(self.run(command))

    # -- the commands ------------------------------------------------------------------------

    def run(self, command: Command) -> list[str]:
        """Run a command; its answer's lines. CommandError for an unknown name and the like."""
        lb = self.lb
        match command:
            case Help():
                return help_lines()
            case ShowInfo():
                return self.info()
            case ShowStat(format="json"):
                return render_json(stat_rows(lb.statistics(), lb.draining))
            case ShowStat():
                return render_csv(stat_rows(lb.statistics(), lb.draining))
            case ShowServersState(backend=name):
                return self.servers_state(name)
            case ShowSessions():
                return self.sessions()
            case SetState(target=target, state=state):
                before = self._state(target)
                lb.set_server_state(target.backend, target.server, state)
                after = self._state(target)
                return [f"Server {target} set to {state}: now {after} (was {before})."]
            case SetWeight(target=target):
                weight = command.resolve(self._server_config(target).weight)
                previous = self._weight(target)
                lb.set_weight(target.backend, target.server, weight)
                return [f"Server {target} weight is now {weight} (was {previous})."]
            case GetWeight(target=target):
                configured = self._server_config(target).weight
                return [f"{self._weight(target)} (initial {configured})"]
            case DisableHealth(target=target):
                self._health(target, enable=False)
                return [f"Health checks of {target} disabled; it stays {self._state(target)}."]
            case EnableHealth(target=target):
                self._health(target, enable=True)
                return [f"Health checks of {target} enabled."]
        raise AssertionError(command)  # the parser makes only the commands above

    async def reload(self) -> list[str]:
        """``reload``: read the config file again and switch to it; the errors when it can't."""
        lb = self.lb
        from .balancer import reload_failure_answer

        try:
            await lb.reload_config_file()
        except TrilbError as exc:
            raise CommandError(reload_failure_answer(exc)) from None
        config = lb.config
        return [f"Reloaded: {len(config.frontends)} frontends, {len(config.backends)} backends."]

    def info(self) -> list[str]:
        lb = self.lb
        return info_lines(lb.statistics(), lb.config, lb.uptime, lb.draining)

    def servers_state(self, backend: str | None) -> list[str]:
        if backend is not None:
            self._backend_config(backend)
        header = [
            *("be_name", "srv_name", "srv_addr", "srv_state", "srv_admin_state", "srv_health"),
            *("srv_weight", "srv_iweight", "srv_backup", "health_checks", "check_status"),
            "cur_req",
        ]
        rows = [
            (
                s.backend,
                s.server,
                s.address,
                s.state,
                s.admin_state,
                "UP" if s.up else "DOWN",
                s.weight,
                s.configured_weight,
                int(s.backup),
                s.health_checks,
                check_code(s.check_status),
                s.current_requests,
            )
            for s in self.lb.servers_state()
            if backend is None or s.backend == backend
        ]
        return ["1", *render_table(header, rows)]  # the first line: this layout's version

    def sessions(self) -> list[str]:
        sessions = self.lb.sessions()
        lines = [f"# {len(sessions)} session{'' if len(sessions) == 1 else 's'}"]
        for s in sessions:
            fields = [
                f"{s.frontend}#{s.id}",
                f"client={s.client}",
                f"tls={'yes' if s.tls else 'no'}",
                f"age={s.age:.1f}s",
                f"requests={s.requests}",
            ]
            if s.request_line is None:
                fields.append("idle")
            else:
                fields += [f"backend={s.backend or '-'}", f"server={s.server or '-'}"]
                fields.append(f"request={_quoted(s.request_line)}")
            lines.append(" ".join(fields))
        return lines

    # -- names and lookups ---------------------------------------------------------------------

    def _backend_config(self, name: str) -> None:
        try:
            self.lb.config.backend(name)
        except KeyError:
            raise CommandError(f"No such backend: {name}.") from None

    def _server_config(self, target: ServerRef) -> ServerConfig:
        self._backend_config(target.backend)
        for server in self.lb.config.backend(target.backend).servers:
            if server.name == target.server:
                return server
        raise CommandError(f"No such server: {target}.")

    def _now(self, target: ServerRef) -> ServerState:
        self._server_config(target)
        return next(
            s
            for s in self.lb.servers_state()
            if s.backend == target.backend and s.server == target.server
        )

    def _state(self, target: ServerRef) -> str:
        return self._now(target).state

    def _weight(self, target: ServerRef) -> int:
        return self._now(target).weight

    def _health(self, target: ServerRef, *, enable: bool) -> None:
        self._server_config(target)
        try:
            if enable:
                self.lb.enable_health(target.backend, target.server)
            else:
                self.lb.disable_health(target.backend, target.server)
        except ValueError:
            message = f"No health checks are configured for backend {target.backend}."
            raise CommandError(message) from None


def info_lines(stats: Statistics, config: Config, uptime: float, draining: bool) -> list[str]:
    """``show info``. With worker processes the figures are the totals, ``Pid`` is this
    (the master's) process, and as in HAProxy ``Nbproc`` says how many processes there
    are; a ``Worker:`` line each follows the frontends and backends."""
    traffic = [fe.traffic for fe in stats.frontends]
    servers = [s for b in stats.backends for s in b.servers]
    lines = [
        "Name: trilb",
        f"Version: {__version__}",
        *([f"Nbproc: {len(stats.workers)}"] if stats.workers else []),
        f"Pid: {os.getpid()}",
        f"Uptime: {format_duration(uptime)}",
        f"Uptime_sec: {int(uptime)}",
        f"Maxconn: {config.global_.max_connections}",
        f"CurrConns: {sum(t.current_connections for t in traffic)}",
        f"CumConns: {sum(t.total_connections for t in traffic)}",
        f"CumReq: {sum(t.total_requests for t in traffic)}",
        f"Stopping: {int(draining)}",
        f"Frontends: {len(stats.frontends)}",
        f"Backends: {len(stats.backends)}",
        f"Servers: {len(servers)}",
        f"ServersUp: {sum(1 for s in servers if s.state == 'UP')}",
    ]
    for fe in stats.frontends:
        lines.append(
            f"Frontend: {fe.name} {' '.join(fe.addresses) or '-'} "
            f"({fe.traffic.current_connections} connections)"
        )
    for backend in stats.backends:
        up = sum(1 for s in backend.servers if s.state == "UP")
        balance = config.backend(backend.name).balance
        lines.append(f"Backend: {backend.name} {balance} ({up}/{len(backend.servers)} servers UP)")
    lines += worker_info(stats.workers)
    return lines


def worker_info(workers: Iterable[WorkerStatistics]) -> list[str]:
    """``show info``'s line for each worker process: ``Worker: 2 pid 4242 running (1 restart,
    up 0d 0h03m10s)``; ``pid -`` and no uptime while no process runs."""
    lines = []
    for w in workers:
        restarts = f"{w.restarts} restart{'' if w.restarts == 1 else 's'}"
        if w.pid is None:
            lines.append(f"Worker: {w.index} pid - {w.state} ({restarts})")
        else:
            uptime = format_duration(w.uptime)
            lines.append(f"Worker: {w.index} pid {w.pid} {w.state} ({restarts}, up {uptime})")
    return lines


def stat_rows(stats: Statistics, draining: bool = False) -> list[StatRow]:
    """``show stat``'s rows, in HAProxy's meaning of each column: a FRONTEND row per frontend,
    then for each backend its servers' rows and a BACKEND row.

    With worker processes those rows are the totals, with an empty ``pid`` (the figures are no
    one process's); then come the same rows for each worker, ``pid`` its number (1..N), as
    HAProxy's processes each give theirs. A worker that is stopping shows its frontends STOP.

    (``bin``/``bout`` are bytes from/to the clients for every row, as in HAProxy: for a server,
    what it was sent and what it answered.)"""
    rows = _proxy_rows(stats, draining, None)
    for worker in stats.workers:
        stopping = draining or worker.state == "stopping"
        rows += _proxy_rows(worker.statistics, stopping, worker.index)
    return rows


def _proxy_rows(stats: Statistics, draining: bool, pid: int | None) -> list[StatRow]:
    rows: list[StatRow] = []
    for fe in stats.frontends:
        t = fe.traffic
        rows.append(
            {
                "pxname": fe.name,
                "svname": "FRONTEND",
                "scur": t.current_connections,
                "smax": t.peak_connections,
                "stot": t.total_connections,
                "bin": t.bytes_in,
                "bout": t.bytes_out,
                "status": "STOP" if draining else "OPEN",
                "pid": pid,
                "type": 0,
                **_responses(t),
                "req_tot": t.total_requests,
                "addr": " ".join(fe.addresses),
            }
        )
    for backend in stats.backends:
        for s in backend.servers:
            t = s.traffic
            rows.append(
                {
                    "pxname": backend.name,
                    "svname": s.name,
                    "scur": t.current_requests,
                    "smax": t.peak_requests,
                    "stot": t.total_requests,
                    "bin": t.bytes_out,
                    "bout": t.bytes_in,
                    "econ": t.connect_errors,
                    "status": s.state,
                    "weight": s.weight,
                    "act": 0 if s.backup else 1,
                    "bck": 1 if s.backup else 0,
                    "downtime": int(s.downtime),
                    "pid": pid,
                    "type": 2,
                    "check_status": check_code(s.check_status),
                    **_responses(t),
                    "req_tot": t.total_requests,
                    "last_chk": s.check_status or None,
                    "addr": s.address,
                }
            )
        t = backend.traffic
        serving = [s for s in backend.servers if s.state == "UP"]
        rows.append(
            {
                "pxname": backend.name,
                "svname": "BACKEND",
                "qcur": backend.queued,
                "scur": t.current_requests,
                "smax": t.peak_requests,
                "stot": t.total_requests,
                "bin": sum(s.traffic.bytes_out for s in backend.servers),
                "bout": sum(s.traffic.bytes_in for s in backend.servers),
                "econ": sum(s.traffic.connect_errors for s in backend.servers),
                "status": "UP"
                if any(s.state in ("UP", "DRAIN") for s in backend.servers)
                else "DOWN",
                "weight": sum(s.weight for s in serving),
                "act": sum(1 for s in serving if not s.backup),
                "bck": sum(1 for s in serving if s.backup),
                "pid": pid,
                "type": 1,
                **_responses(t),
                "req_tot": t.total_requests,
            }
        )
    return rows


def _responses(t: TrafficStatistics) -> dict[str, int]:
    return {
        "hrsp_1xx": t.responses_1xx,
        "hrsp_2xx": t.responses_2xx,
        "hrsp_3xx": t.responses_3xx,
        "hrsp_4xx": t.responses_4xx,
        "hrsp_5xx": t.responses_5xx,
        "hrsp_other": t.responses_other,
    }


def _quoted(text: str) -> str:
    """A request line in double quotes, with backslash escapes (as JSON writes strings)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


async def _send(stream: TCPStream, data: bytes) -> bool:
    """Send an answer; False if the client did not take it within SEND_TIMEOUT."""
    if not data:
        return True
    with trio.move_on_after(SEND_TIMEOUT):
        await stream.send_all(data)
        return True
    return False


class _LineTooLong(Exception):
    pass


class _LineReader:
    """Lines from a stream, with a bounded buffer: at most MAX_LINE bytes are held while waiting
    for a line end (then :class:`_LineTooLong`), plus what one read brought."""

    def __init__(self, stream: TCPStream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._eof = False

    async def next_line(self) -> bytes | None:
        """The next line with its ``\\n``, or what was left when the client closed (a last
        command without a line end is still a command); None at the end."""
        buffer = self._buffer
        searched = 0
        while True:
            end = buffer.find(b"\n", searched)
            if end >= 0:
                if end + 1 > MAX_LINE:
                    raise _LineTooLong
                line = bytes(buffer[: end + 1])
                del buffer[: end + 1]
                return line
            if len(buffer) >= MAX_LINE:
                raise _LineTooLong
            if self._eof:
                line = bytes(buffer)
                buffer.clear()
                return line or None
            searched = len(buffer)
            data = await self._stream.receive_some(MAX_LINE)
            if not data:
                self._eof = True
            buffer += data
