"""One worker process of ``trilb serve`` when ``global.workers`` is more than 1.

A worker is a whole balancer (:func:`trilb.serve`): it binds every frontend address itself with
SO_REUSEPORT, runs its own health checks, and is driven by signals like a single-process
``trilb serve`` (:func:`trilb.daemon.run_until_signalled`); the master forwards the signals it
gets. ``[stats]`` and ``[admin]`` are the master's: a worker leaves them out, and answers the
master's requests on the control link instead (:mod:`trilb.core.control`):

* ``stats``: its :class:`~trilb.stats.Statistics`, as JSON;
* ``admin``: an admin socket command line run on its balancer, and the answer's text;
* ``reload``: read the config file again and switch to it (:meth:`Balancer.reload`).

When the link ends -- the master is gone, even killed -- the worker drains as on SIGTERM and
exits: no orphan goes on serving with nobody to supervise it.
"""

from __future__ import annotations

import functools
import os
import socket
from typing import Any

import attrs
import trio

from .admin import AdminServer
from .balancer import Balancer, serve
from .config import Config, load_config
from .control_link import ControlLink, LinkClosed
from .core.control import Message, error_reply, event, ok_reply
from .daemon import run_until_signalled
from .errors import ConfigError, TrilbError
from .logsink import LogSink
from .process import Identity, drop_privileges, resolve_identity
from .stats import statistics_to_json

__all__ = ["run_worker", "worker_config"]


def worker_config(config: Config) -> Config:
    """The part of ``config`` a worker runs: all but the master's ``[stats]`` and ``[admin]``."""
    return attrs.evolve(config, stats=None, admin=None)


def run_worker(
    config_path: str, index: int, control_fd: int, grace: float | None, verbosity: int
) -> None:
    """The worker's whole life (``trilb _worker``, started by the master): serve until a
    signal or the master's going away stops it. Errors before it serves (a port in use)
    propagate, so the process exits non-zero with the message on stderr, for the master to
    report."""
    link_socket = socket.socket(fileno=control_fd)
    try:
        config = worker_config(load_config(config_path))
        identity = resolve_identity(config.global_)
        log = LogSink.from_config(config.log, verbosity=verbosity)
        log.prefix = f"worker {index}: "
        drain = config.global_.timeout_drain if grace is None else grace
        try:
            trio.run(_run, config, config_path, log, drain, link_socket, identity)
        finally:
            log.close()
    finally:
        link_socket.close()


async def _run(
    config: Config,
    config_path: str,
    log: LogSink,
    drain: float,
    link_socket: socket.socket,
    identity: Identity | None,
) -> None:
    link = ControlLink(link_socket)
    start = functools.partial(serve, config, log=log, config_path=config_path, reuse_port=True)
    async with trio.open_nursery() as nursery:

        def started(lb: Balancer) -> None:
            drop_privileges(identity)  # (every listener is bound)
            nursery.start_soon(_answer_master, link, lb, config_path, drain)

        await run_until_signalled(start, log, drain, on_started=started)
        nursery.cancel_scope.cancel()


async def _answer_master(link: ControlLink, lb: Balancer, config_path: str, drain: float) -> None:
    """Tell the master the worker serves, then answer its requests until the link ends; then
    drain (the master is gone: nobody would tell this worker to stop)."""
    try:
        await link.send(event("ready", pid=os.getpid()))
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    message = await link.receive()
                except LinkClosed:
                    nursery.cancel_scope.cancel()  # (answers under way have nobody to go to)
                    break
                nursery.start_soon(_answer, link, lb, config_path, message)
    except LinkClosed:
        pass  # the master went away before it heard we were ready
    if not lb.draining:
        lb.log.warning("the master process is gone: draining, then exiting")
    await lb.drain(drain)


async def _answer(link: ControlLink, lb: Balancer, config_path: str, message: Message) -> None:
    request_id = message.get("id", 0)
    try:
        result = await _run_request(lb, config_path, message)
    except (TrilbError, ValueError, KeyError) as exc:
        reply = error_reply(request_id, _describe(exc))
    except Exception as exc:  # noqa: BLE001 - a bug in one request must not end the worker
        lb.log.error(f"control request {message.get('op')!r} failed: {exc!r}")
        reply = error_reply(request_id, f"internal error: {exc!r}")
    else:
        reply = ok_reply(request_id, result)
    try:
        await link.send(reply)
    except LinkClosed:
        pass  # (the reader sees it too, and drains)


async def _run_request(lb: Balancer, config_path: str, message: Message) -> Any:
    op = message.get("op")
    if op == "stats":
        return statistics_to_json(lb.statistics())
    if op == "admin":
        answer, _ = await AdminServer(lb).answer(str(message["line"]).encode())
        return answer.decode("utf-8", "replace")
    if op == "reload":
        await lb.reload(worker_config(load_config(config_path)))
        return f"{len(lb.config.frontends)} frontends, {len(lb.config.backends)} backends"
    raise ValueError(f"unknown op {op!r}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConfigError):
        return "; ".join(str(p) for p in exc.problems)
    return str(exc)
