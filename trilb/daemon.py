"""A balancer run as a daemon: started, then driven by Unix signals until it stops.

``trilb serve`` runs one balancer this way (one process), and so does each worker process when
``global.workers`` is more than 1 (see :mod:`trilb.master`, which forwards the signals it gets).
"""

from __future__ import annotations

import math
import signal
from collections.abc import Awaitable, Callable

import trio

from .balancer import Balancer
from .errors import TrilbError
from .logsink import LogSink
from .systemd import Notifier

__all__ = ["StartBalancer", "run_until_signalled"]

StartBalancer = Callable[..., Awaitable[None]]


async def run_until_signalled(
    start: StartBalancer,
    log: LogSink,
    grace: float,
    *,
    notifier: Notifier | None = None,
    on_started: Callable[[Balancer], None] | None = None,
) -> None:
    """Run the balancer until a signal stops it:

    * SIGTERM or SIGINT drains it: listeners close, idle keep-alive connections close, requests
      in flight and tunnels get up to ``grace`` seconds to finish, then the rest are cut;
    * SIGUSR1 drains it without a time limit: it ends when the last connection has;
    * any of the three while draining stops at once.

    SIGUSR2 reopens the log file (after logrotate moved it). SIGHUP reloads: the config file is
    read again and the balancer switches to it (:meth:`Balancer.reload`); an invalid file is
    logged, one line per problem, and the running configuration goes on.

    ``on_started(lb)`` runs once the balancer serves (every listener bound); then ``notifier``
    (systemd) hears READY=1, and STOPPING=1 when a drain starts. Returns when the balancer has
    stopped, whatever stopped it (a signal, or ``lb.drain()`` called by ``on_started``'s
    tasks)."""
    notifier = notifier if notifier is not None else Notifier()
    watched = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP)
    with trio.open_signal_receiver(*watched) as signals:
        async with trio.open_nursery() as nursery:
            lb: Balancer = await nursery.start(_run_then_stop, start, nursery.cancel_scope)
            lb.notifier = notifier  # (it says RELOADING=1 and READY=1 around a reload)
            if on_started is not None:
                on_started(lb)
            notifier.ready()
            nursery.start_soon(notifier.run_watchdog)

            # the signal that started the drain (lb.draining is set once its task has run)
            drain_signal: list[str] = []

            async def drain_then_stop(limit: float) -> None:
                await lb.drain(limit)
                nursery.cancel_scope.cancel()

            async def watch_signals() -> None:
                async for signum in signals:
                    if signum == signal.SIGUSR2:
                        log.reopen()
                        log.info("SIGUSR2 received: log target reopened")
                    elif signum == signal.SIGHUP:
                        nursery.start_soon(_reload, lb, log)
                    elif not drain_signal and not lb.draining:
                        name = signal.Signals(signum).name
                        drain_signal.append(name)
                        notifier.stopping()
                        if signum == signal.SIGUSR1:
                            log.info(
                                f"{name} received: draining until every connection has ended "
                                "(a second signal stops now)"
                            )
                            nursery.start_soon(drain_then_stop, math.inf)
                        else:
                            log.info(f"{name} received: draining (again to stop now)")
                            nursery.start_soon(drain_then_stop, grace)
                    else:
                        name = signal.Signals(signum).name
                        again = "again" if name in drain_signal else "while draining"
                        log.info(f"{name} received {again}: stopping now")
                        nursery.cancel_scope.cancel()

            nursery.start_soon(watch_signals)


async def _run_then_stop(
    start: StartBalancer,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[Balancer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the balancer; once it has stopped (drained), stop the signal watching too."""
    await start(task_status=task_status)
    scope.cancel()


async def _reload(lb: Balancer, log: LogSink) -> None:
    """SIGHUP: read the config file again and switch to it. A failure is logged by the balancer
    (one line per problem) and the running configuration goes on; systemd hears RELOADING=1,
    then READY=1 either way (from the balancer: ``trilb ctl reload`` does the same)."""
    log.info("SIGHUP received: reloading the configuration")
    try:
        await lb.reload_config_file()
    except TrilbError:
        pass  # logged; the previous configuration keeps running
