"""``trilb serve`` with ``global.workers`` > 1: a master process supervising N worker processes.

::

    Master.run()                    the master's nursery
    ├── WorkerSlot.supervise()      one per worker: wait for its process, restart it if it dies
    │   ├── Requester.run()         the worker's control link: replies and events
    │   └── poll()                  its statistics, every POLL_INTERVAL
    ├── serve_stats, serve_admin    ``[stats]`` and ``[admin]``: the master's, with totals
    └── watch_signals()             forwarded to the workers; SIGHUP reloads them all

Theory of operation. Each worker (:mod:`trilb.worker`) is a whole balancer that binds every
frontend address itself with SO_REUSEPORT, so the kernel spreads new connections over the
workers, and a worker that dies takes only its own connections (and those waiting in its
accept queue) with it. Each worker runs its own health checks, as HAProxy's ``nbproc``
processes did: N times the check traffic, and for a moment after a server changes state the
workers may disagree (the totals show the state most of them report). The master carries no
traffic. It:

* starts the workers (all must come up, else ``trilb serve`` fails with the reason) and
  restarts one that exits, at once if it had run for a while, else after a growing delay;
* forwards SIGTERM, SIGINT, SIGUSR1 and SIGUSR2, so that each worker drains or reopens its log
  as a single process would; it exits once every worker has;
* reloads on SIGHUP or ``trilb ctl reload``: it checks the file itself first (an invalid one is
  logged and changes nothing), then tells every worker to reload (each keeps its listeners:
  nothing is refused in between; see :meth:`trilb.Balancer.reload`);
* serves ``[stats]`` and ``[admin]``, with figures summed over the workers and a row per
  worker; admin commands that change a server (weight, state, health checks) go to every
  worker, and are replayed to a worker that restarts, so it does not forget them.

Workers start in a process group of their own, so a Ctrl-C in a terminal reaches the master
only (which forwards it once). If the master dies, even by SIGKILL, each worker sees its control
link close and drains, then exits.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence

import attrs
import trio

from .balancer import reload_failure_answer, reload_failure_lines
from .config import Config, ServerConfig, load_config
from .control_link import ControlLink, LinkClosed, Requester, WorkerRequestError
from .core.admin_commands import (
    Command,
    DisableHealth,
    EnableHealth,
    ServerRef,
    SetState,
    SetWeight,
    is_error_answer,
)
from .core.control import Message
from .core.reload import unapplied_changes
from .errors import ConfigError, StartupError, TrilbError
from .logsink import LogSink
from .rules import compile_rules
from .runtime import load_frontend_tls
from .stats import RetiredTotals, Statistics, WorkerStatistics, statistics_from_json
from .systemd import Notifier

__all__ = ["Master", "ReloadFailed", "WorkerSlot"]

#: how often the master asks each worker for its statistics (the stats server samples its rates
#: every second; the admin socket's ``show stat`` asks afresh)
POLL_INTERVAL = 1.0

#: a worker must answer a request within this; a stuck one is reported, not waited for
REQUEST_TIMEOUT = 10.0

#: a reload resolves names and reads certificates in every worker: give it time
RELOAD_TIMEOUT = 60.0

#: a worker that ran at least this long before it died is restarted at once (else it is
#: probably crashing at start: wait, doubling the delay up to MAX_RESTART_DELAY)
STABLE_AFTER = 10.0
MIN_RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 30.0

#: after the drain's grace period, how long a worker may take to exit before it is killed
EXIT_MARGIN = 10.0

#: systemd's variables are the master's: a worker must not answer for the service
_MASTER_ONLY_ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

_FORWARDED: dict[int, str] = {
    signal.SIGINT: "SIGINT",
    signal.SIGTERM: "SIGTERM",
    signal.SIGUSR1: "SIGUSR1",
    signal.SIGUSR2: "SIGUSR2",
}


class ReloadFailed(TrilbError):
    """A reload was refused (invalid file) or failed in some worker; the message says where."""


class WorkerSlot:
    """Worker number ``index`` over its successive processes."""

    def __init__(self, master: Master, index: int) -> None:
        self.master = master
        self.index = index
        self.process: trio.Process | None = None
        self.requester: Requester | None = None
        self.pid: int | None = None
        #: "starting", "running", "restarting", "stopping", "stopped"
        self.state = "starting"
        self.restarts = 0
        self.started_at = 0.0  # time.monotonic() when the current process came up
        #: the current process's latest figures (None until its first answer)
        self.statistics: Statistics | None = None
        self._ready = trio.Event()

    @property
    def running(self) -> bool:
        return self.state in ("running", "stopping") and self.requester is not None

    def snapshot(self) -> WorkerStatistics:
        uptime = time.monotonic() - self.started_at if self.running else 0.0
        return WorkerStatistics(
            index=self.index,
            pid=self.pid if self.running else None,
            state=self.state,
            restarts=self.restarts,
            uptime=uptime,
            statistics=self.statistics or Statistics(frontends=(), backends=()),
        )

    # -- one process ---------------------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> None:
        """Start a worker process and wait until it serves; its link's tasks run in
        ``nursery``. StartupError when it exits before (its own message is on stderr)."""
        master = self.master
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            environment = {k: v for k, v in os.environ.items() if k not in _MASTER_ONLY_ENVIRONMENT}
            process = await trio.lowlevel.open_process(
                master.worker_command(self.index, child.fileno()),
                pass_fds=(child.fileno(),),
                process_group=0,  # (a terminal's Ctrl-C goes to the master alone)
                env=environment,
            )
        except OSError as exc:
            parent.close()
            raise StartupError(f"worker {self.index}: cannot start: {exc}") from None
        finally:
            child.close()
        self.process, self.pid, self._ready = process, process.pid, trio.Event()
        self.statistics = None
        requester = Requester(ControlLink(parent), self._on_event)
        nursery.start_soon(self._talk, requester, process)
        async with trio.open_nursery() as waiting:

            async def exited() -> None:
                await process.wait()
                waiting.cancel_scope.cancel()

            waiting.start_soon(exited)
            await self._ready.wait()
            waiting.cancel_scope.cancel()
        if process.returncode is not None and not self._ready.is_set():
            raise StartupError(
                f"worker {self.index} (pid {process.pid}) {_ended(process.returncode)} "
                "before it could serve (its message is above)"
            )
        self.requester = requester
        self.started_at = time.monotonic()
        self.state = "stopping" if master.stopping else "running"
        await master.replay_overrides(self)

    def _on_event(self, message: Message) -> None:
        if message.get("event") == "ready":
            self._ready.set()

    async def _talk(self, requester: Requester, process: trio.Process) -> None:
        """The link of one process: its reader, and the statistics poll (until it ends)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._poll, requester)
            await requester.run()
            nursery.cancel_scope.cancel()
        requester.link.close()

    async def _poll(self, requester: Requester) -> None:
        while True:
            await self.refresh(requester)
            await trio.sleep(POLL_INTERVAL)

    async def refresh(self, requester: Requester | None = None) -> None:
        """Ask the worker for its statistics now (a worker that can't answer keeps its last)."""
        requester = requester or self.requester
        if requester is None:
            return
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                result = await requester.request("stats")
        except (LinkClosed, WorkerRequestError, trio.TooSlowError):
            return
        self.statistics = statistics_from_json(result)

    # -- its whole life ----------------------------------------------------------------------

    async def supervise(self, nursery: trio.Nursery) -> None:
        """Wait for the worker to exit; restart it unless the master is stopping. On
        cancellation the process is killed (the master's own error path)."""
        master = self.master
        delay = MIN_RESTART_DELAY
        try:
            while True:
                process = self.process
                assert process is not None
                await process.wait()
                ran = time.monotonic() - self.started_at
                if self.statistics is not None:
                    master.retire(self.statistics)
                self.requester, self.statistics = None, None
                if master.stopping:
                    self.state = "stopped"
                    code = process.returncode
                    if code:
                        master.log.warning(
                            f"worker {self.index} (pid {process.pid}) {_ended(code)}"
                        )
                    return
                self.state = "restarting"
                delay = (
                    MIN_RESTART_DELAY if ran >= STABLE_AFTER else min(delay * 2, MAX_RESTART_DELAY)
                )
                wait = 0.0 if ran >= STABLE_AFTER else delay
                master.log.error(
                    f"worker {self.index} (pid {process.pid}) {_ended(process.returncode)}; "
                    f"restarting it{f' in {wait:g}s' if wait else ''}"
                )
                while True:
                    await trio.sleep(wait)
                    if master.is_stopping():
                        self.state = "stopped"
                        return
                    try:
                        await self.start(nursery)
                    except StartupError as exc:
                        wait = delay = min(delay * 2, MAX_RESTART_DELAY)
                        master.log.error(f"{exc}; trying again in {wait:g}s")
                        continue
                    break
                self.restarts += 1
                master.log.info(f"worker {self.index} restarted (pid {self.pid})")
        finally:
            self.kill_if_running()

    def signal(self, signum: int) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            try:
                process.send_signal(signum)
            except ProcessLookupError:
                pass

    def kill_if_running(self) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            try:
                process.kill()
            except ProcessLookupError:
                pass


class Master:
    """The master process: N worker slots, the signals, reloads, and the totals."""

    def __init__(
        self,
        config: Config,
        config_path: str,
        log: LogSink,
        *,
        grace: float | None = None,
        verbosity_flags: Sequence[str] = (),
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.log = log
        self.grace = grace
        self.verbosity_flags = tuple(verbosity_flags)
        self.notifier = notifier if notifier is not None else Notifier()
        self.slots = [WorkerSlot(self, index) for index in range(1, config.global_.workers + 1)]
        self.stopping = False
        self._retired = RetiredTotals()
        self._started = time.monotonic()
        self._reload_lock = trio.Lock()
        #: the last command of each kind for each server (weight, state, health checks): what a
        #: restarted worker is told again (bounded: a few per server)
        self._overrides: dict[tuple[str, ServerRef], str] = {}

    # -- what the stats server and the admin socket read ---------------------------------------

    @property
    def uptime(self) -> float:
        return time.monotonic() - self._started

    @property
    def draining(self) -> bool:
        return self.stopping

    def is_stopping(self) -> bool:
        """(:attr:`stopping`, for code that must read it again after a wait)"""
        return self.stopping

    def statistics(self) -> Statistics:
        """The totals over every worker (the ones that died included, so that the counters
        never go back), with a row per worker."""
        live = [slot.statistics for slot in self.slots if slot.statistics is not None]
        workers = tuple(slot.snapshot() for slot in self.slots)
        return attrs.evolve(self._retired.totals(live), workers=workers)

    def retire(self, last: Statistics) -> None:
        """A worker process ended: keep its counters in the totals."""
        self._retired.add(last)

    async def refresh(self) -> None:
        """Ask every worker for its statistics now (``show stat`` wants the latest)."""
        async with trio.open_nursery() as nursery:
            for slot in self.slots:
                nursery.start_soon(slot.refresh)

    # -- the workers ---------------------------------------------------------------------------

    def worker_command(self, index: int, control_fd: int) -> list[str]:
        command = [sys.executable, "-m", "trilb", *self.verbosity_flags, "_worker"]
        command += ["--index", str(index), "--control-fd", str(control_fd)]
        if self.grace is not None:
            command += ["--grace", repr(self.grace)]
        return [*command, self.config_path]

    async def start_workers(self, nursery: trio.Nursery) -> None:
        """Start every worker at once and wait until all serve. StartupError naming each one
        that could not (and then the others are stopped)."""
        failures: list[str] = []
        async with trio.open_nursery() as starting:
            for slot in self.slots:
                starting.start_soon(self._first_start, slot, nursery, failures, starting)
        if failures:
            for slot in self.slots:
                slot.kill_if_running()
            raise StartupError("; ".join(sorted(failures)))
        for slot in self.slots:
            nursery.start_soon(slot.supervise, nursery)

    async def _first_start(
        self,
        slot: WorkerSlot,
        nursery: trio.Nursery,
        failures: list[str],
        starting: trio.Nursery,
    ) -> None:
        try:
            await slot.start(nursery)
        except StartupError as exc:
            failures.append(str(exc))
            starting.cancel_scope.cancel()  # (the others need not finish starting)

    def forward(self, signum: int) -> None:
        for slot in self.slots:
            slot.signal(signum)

    async def broadcast(self, op: str, **arguments: object) -> list[tuple[WorkerSlot, object]]:
        """Ask every running worker at once; (slot, result or the exception) for each, a
        worker that does not answer in time (REQUEST_TIMEOUT, RELOAD_TIMEOUT) with
        trio.TooSlowError."""
        results: list[tuple[WorkerSlot, object]] = []
        limit = RELOAD_TIMEOUT if op == "reload" else REQUEST_TIMEOUT

        async def ask(slot: WorkerSlot, requester: Requester) -> None:
            try:
                with trio.fail_after(limit):
                    result: object = await requester.request(op, **arguments)
            except (LinkClosed, WorkerRequestError, trio.TooSlowError) as exc:
                result = exc
            results.append((slot, result))

        async with trio.open_nursery() as nursery:
            for slot in self.slots:
                if slot.running and slot.requester is not None:
                    nursery.start_soon(ask, slot, slot.requester)
        results.sort(key=lambda pair: pair[0].index)
        return results

    # -- operator commands ---------------------------------------------------------------------

    async def admin_command(self, line: str, command: Command) -> list[tuple[WorkerSlot, object]]:
        """Run an admin command line (``command``, parsed) on every worker; remember it (for
        restarted workers) when it changes a server and some worker took it."""
        results = await self.broadcast("admin", line=line)
        key = _override_key(command)
        if key is not None and any(isinstance(r, str) and not _is_error(r) for _, r in results):
            self._overrides[key] = line
        return results

    async def replay_overrides(self, slot: WorkerSlot) -> None:
        """Tell a (re)started worker what the operator changed at run time."""
        if slot.requester is None:
            return
        for line in list(self._overrides.values()):
            try:
                with trio.fail_after(REQUEST_TIMEOUT):
                    await slot.requester.request("admin", line=line)
            except (LinkClosed, WorkerRequestError, trio.TooSlowError):
                return

    async def reload(self) -> str:
        """Read the config file again, check it, and have every worker switch to it. Returns
        what happened; ReloadFailed (logged) when the file is invalid or a worker failed."""
        async with self._reload_lock:
            if self.stopping:
                raise ReloadFailed("cannot reload: stopping")
            try:
                config = load_config(self.config_path)
                load_frontend_tls(config)  # (what ``trilb check`` checks: certificates, rules)
                compile_rules(config)
            except ConfigError as exc:
                for line in reload_failure_lines(exc):
                    self.log.error(line)
                raise ReloadFailed(reload_failure_answer(exc)) from None
            for section in _master_changes(self.config, config):
                self.log.warning(f"reload: {section} changed: that needs a restart (not applied)")
            self.notifier.reloading()
            try:
                results = await self.broadcast("reload")
            finally:
                self.notifier.ready()
            failed = [(slot, r) for slot, r in results if isinstance(r, Exception)]
            if failed:
                where = "; ".join(f"worker {slot.index}: {error}" for slot, error in failed)
                self.log.error(f"reload failed in {len(failed)} of {len(results)} workers: {where}")
                raise ReloadFailed(
                    f"Reload failed in {len(failed)} of {len(results)} workers: {where}"
                )
            self._overrides = _still_applied(self._overrides, self.config, config)
            self.config = config
            summary = f"{len(config.frontends)} frontends, {len(config.backends)} backends"
            self.log.info(f"reloaded: {summary} in {len(results)} workers")
            return f"Reloaded: {summary}."

    # -- the run -------------------------------------------------------------------------------

    async def run(
        self,
        *,
        on_started: Callable[[], None] | None = None,
        task_status: trio.TaskStatus[Master] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Start the workers and the master's services, then supervise until a signal stops
        everything (see the module's docstring). StartupError when a worker or a service can't
        start; then no worker is left running."""
        watched = (*_FORWARDED, signal.SIGHUP)
        with trio.open_signal_receiver(*watched) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.log.run)
                supervised = trio.open_nursery()
                async with supervised as workers:
                    await self.start_workers(workers)
                    await self._start_services(nursery)
                    self.log.info(
                        f"{len(self.slots)} workers serving (pids "
                        f"{', '.join(str(s.pid) for s in self.slots)})"
                    )
                    if on_started is not None:
                        on_started()
                    self.notifier.ready()
                    nursery.start_soon(self.notifier.run_watchdog)
                    nursery.start_soon(self._watch_signals, signals, nursery)
                    task_status.started(self)
                # every worker has exited, for good
                self.log.info("every worker has stopped")
                nursery.cancel_scope.cancel()
        self.log.info("stopped")

    async def _start_services(self, nursery: trio.Nursery) -> None:
        from .admin import serve_admin
        from .master_admin import ClusterAdmin
        from .stats_server import serve_stats

        if self.config.stats is not None:
            await nursery.start(serve_stats, self, self.config.stats, self.log)
        if self.config.admin is not None:
            await nursery.start(serve_admin, ClusterAdmin(self), self.config.admin)

    async def _watch_signals(self, signals: AsyncIterator[int], nursery: trio.Nursery) -> None:
        first: str | None = None
        async for signum in signals:
            if signum == signal.SIGHUP:
                self.log.info("SIGHUP received: reloading the configuration (every worker)")
                nursery.start_soon(self._reload_quietly)
            elif signum == signal.SIGUSR2:
                self.log.reopen()
                self.forward(signum)
                self.log.info("SIGUSR2 received: log target reopened (and forwarded)")
            elif first is None:
                first = _FORWARDED[signum]
                self.stopping = True
                for slot in self.slots:
                    if slot.state == "running":
                        slot.state = "stopping"
                self.notifier.stopping()
                self.log.info(f"{first} received: forwarded to the workers, which drain")
                self.forward(signum)
                if signum != signal.SIGUSR1:
                    nursery.start_soon(self._kill_after, self._grace_of_workers() + EXIT_MARGIN)
            else:
                self.log.info(f"{_FORWARDED[signum]} received again: the workers stop now")
                self.forward(signum)
                nursery.start_soon(self._kill_after, EXIT_MARGIN)

    def _grace_of_workers(self) -> float:
        return self.config.global_.timeout_drain if self.grace is None else self.grace

    async def _kill_after(self, seconds: float) -> None:
        """A worker still there after its drain and a margin is stuck: kill it."""
        if math.isinf(seconds):
            return
        await trio.sleep(seconds)
        for slot in self.slots:
            process = slot.process
            if process is not None and process.returncode is None:
                self.log.error(f"worker {slot.index} (pid {process.pid}) did not exit: killing it")
                slot.kill_if_running()

    async def _reload_quietly(self) -> None:
        try:
            await self.reload()
        except ReloadFailed:
            pass  # logged; the workers go on as they were


def _ended(returncode: int | None) -> str:
    if returncode is None:
        return "is running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


def _is_error(answer: str) -> bool:
    return is_error_answer(answer) is not None


def _override_key(command: Command) -> tuple[str, ServerRef] | None:
    """For a command that changes a server: what it sets, and on which server."""
    match command:
        case SetState(target=target):
            return ("state", target)
        case SetWeight(target=target):
            return ("weight", target)
        case DisableHealth(target=target) | EnableHealth(target=target):
            return ("health", target)
    return None


def _still_applied(
    overrides: dict[tuple[str, ServerRef], str], old: Config, new: Config
) -> dict[tuple[str, ServerRef], str]:
    """The operator's changes a worker keeps across a reload (see :mod:`trilb.core.reload`):
    those of servers still there, except a weight the new file changed."""
    kept = {}
    for (kind, ref), line in overrides.items():
        now, before = _server(new, ref), _server(old, ref)
        if now is None or (kind == "weight" and (before is None or before.weight != now.weight)):
            continue
        kept[kind, ref] = line
    return kept


def _server(config: Config, ref: ServerRef) -> ServerConfig | None:
    for backend in config.backends:
        if backend.name == ref.backend:
            return next((s for s in backend.servers if s.name == ref.server), None)
    return None


def _master_changes(old: Config, new: Config) -> list[str]:
    """The master's sections that a reload does not apply (the workers warn about the others,
    ``[log]`` and ``[global]`` keys such as ``workers``)."""
    return [s for s in unapplied_changes(old, new) if s in ("[stats]", "[admin]")]
