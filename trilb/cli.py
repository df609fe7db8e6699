"""The ``trilb`` command: serve, check, demo.

Errors a user can cause (bad config, port in use) print one clear message each and exit non-zero;
no traceback, ever, for those.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from ._version import __version__
from .balancer import Balancer, load_frontend_tls, serve
from .config import Config, load_config
from .core.accesslog import AccessLogFormatter
from .daemon import StartBalancer, run_until_signalled
from .errors import ConfigError, TrilbError
from .gctune import tune_for_serving
from .logsink import NORMAL, QUIET, VERBOSE, LogSink
from .process import PidFile, check_can_switch, drop_privileges, resolve_identity
from .rules import compile_rules
from .systemd import Notifier

__all__ = ["main"]

EXIT_OK, EXIT_ERROR, EXIT_CONFIG = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trilb", description="A load balancer and reverse proxy built on Trio."
    )
    parser.add_argument("--version", action="version", version=f"trilb {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="also log debug messages")
    verbosity.add_argument(
        "-q", "--quiet", action="store_true", help="log only errors (and the access log)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_cmd = commands.add_parser("serve", help="run the balancer in the foreground")
    serve_cmd.add_argument("config", help="path to config.toml")
    serve_cmd.add_argument(
        "--grace",
        type=float,
        default=None,
        metavar="SECONDS",
        help="on SIGINT/SIGTERM, how long requests in flight may take to finish (overrides "
        "global.timeout_drain, default 30)",
    )
    # a worker process of ``trilb serve`` (global.workers > 1); not listed in the help
    worker_cmd = commands.add_parser("_worker")
    worker_cmd.add_argument("config")
    worker_cmd.add_argument("--index", type=int, required=True)
    worker_cmd.add_argument("--control-fd", type=int, required=True)
    worker_cmd.add_argument("--grace", type=float, default=None)
    check_cmd = commands.add_parser("check", help="validate a config file and exit (0 = valid)")
    check_cmd.add_argument("config", help="path to config.toml")
    demo_cmd = commands.add_parser(
        "demo", help="run a balancer in front of two built-in demo web servers"
    )
    demo_cmd.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    demo_cmd.add_argument("--backends", type=int, default=2, help="demo servers (default 2)")
    demo_cmd.add_argument(
        "--tls",
        action="store_true",
        help="serve HTTPS with a development certificate (made in --certs-dir, as trilb certs "
        "does) and redirect plain HTTP on the next port to it",
    )
    demo_cmd.add_argument("--certs-dir", default="certs/dev", help="(default certs/dev)")
    route_cmd = commands.add_parser(
        "route", help="explain where a request would go (frontend, route, backend, server)"
    )
    route_cmd.add_argument("config", help="path to config.toml")
    route_cmd.add_argument(
        "request",
        help='e.g. "GET https://blog.example.com/wp-admin/ HTTP/1.1"; for a "tcp" frontend '
        '"tls://SERVER-NAME:PORT" or "tcp://HOST:PORT"',
    )
    route_cmd.add_argument(
        "-H", "--header", action="append", default=[], metavar="NAME: VALUE", help="a header"
    )
    route_cmd.add_argument("--src", default="192.0.2.1", help="the client address (192.0.2.1)")
    certs_cmd = commands.add_parser(
        "certs", help="write a local development CA and a certificate it signs (via trustme)"
    )
    certs_cmd.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="host names, *.wildcards or IP addresses (default: localhost 127.0.0.1 ::1)",
    )
    certs_cmd.add_argument(
        "--dir", default="certs/dev", help="where to write (default certs/dev; made if missing)"
    )
    certs_cmd.add_argument(
        "--key-type", choices=("ecdsa", "rsa"), default="ecdsa", help="(default ecdsa)"
    )
    ctl_cmd = commands.add_parser(
        "ctl",
        help="send a command to a running balancer's admin socket (trilb ctl help lists them)",
    )
    where = ctl_cmd.add_mutually_exclusive_group()
    where.add_argument(
        "--socket", metavar="PATH", help="the admin socket (default /run/trilb/admin.sock)"
    )
    where.add_argument(
        "-c", "--config", metavar="CONFIG", help="use the [admin] socket of this config file"
    )
    ctl_cmd.add_argument(
        "words",
        nargs="+",
        metavar="COMMAND",
        help='e.g. "show stat", "set server app/s1 weight 50%%"',
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except BrokenPipeError:
        # the reader went away (``trilb route ... | head``): nothing more to say, no traceback
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK
    except TrilbError as exc:
        return _report(args, exc)
    except BaseExceptionGroup as group:
        # Errors raised while the balancer starts come out of Trio's nurseries in a group.
        sole = _sole_exception(group)
        if isinstance(sole, TrilbError):
            return _report(args, sole)
        raise


def _dispatch(args: argparse.Namespace) -> int:
    verbosity = VERBOSE if args.verbose else QUIET if args.quiet else NORMAL
    if args.command == "check":
        return _check(args.config)
    if args.command == "serve":
        return _serve(args.config, args.grace, verbosity)
    if args.command == "_worker":
        return _worker(args, verbosity)
    if args.command == "demo":
        from .demo import run_demo

        log = LogSink("stdout", "haproxy", verbosity=verbosity)
        certs_dir = Path(args.certs_dir) if args.tls else None
        start = functools.partial(
            run_demo, args.port, max(1, args.backends), log=log, certs_dir=certs_dir
        )
        trio.run(run_until_signalled, start, log, 5.0)
        return EXIT_OK
    if args.command == "route":
        from .explain import explain_request

        config = load_config(args.config)
        for line in explain_request(config, args.request, args.header, args.src):
            print(line)
        return EXIT_OK
    if args.command == "ctl":
        from .ctl import ctl

        answer = ctl(args.socket, args.config, args.words)
        if answer:
            print(answer)
        return EXIT_OK
    if args.command == "certs":
        from .devcerts import describe, write_dev_certs

        print(describe(write_dev_certs(Path(args.dir), args.names, key_type=args.key_type)))
        return EXIT_OK
    raise AssertionError(args.command)  # argparse only accepts the commands above


def _serve(path: str, grace: float | None, verbosity: int) -> int:
    """``trilb serve``: the balancer, and around it what the process does as a daemon (see
    :mod:`trilb.process`): the pidfile, dropping privileges, telling systemd."""
    config = load_config(path)
    # checked before anything is bound: a bad user or pidfile folder fails at once
    identity = check_can_switch(resolve_identity(config.global_))
    pidfile = PidFile(config.global_.pidfile) if config.global_.pidfile is not None else None
    if pidfile is not None:
        pidfile.check()
    log = LogSink.from_config(config.log, verbosity=verbosity)
    if config.global_.workers > 1:
        return _serve_workers(config, os.path.abspath(path), grace, verbosity, log, pidfile)

    def started(lb: Balancer) -> None:
        # listeners, log target, admin socket: all open; from here on, nothing needs root
        if pidfile is not None:
            pidfile.write()
        drop_privileges(identity)
        if identity is not None:
            log.info(f"running as {identity.describe} (uid {os.getuid()}, gid {os.getgid()})")

    start: StartBalancer = functools.partial(
        serve, config, log=log, config_path=os.path.abspath(path)
    )
    drain = config.global_.timeout_drain if grace is None else grace
    tune_for_serving()
    try:
        trio.run(
            functools.partial(
                run_until_signalled,
                start,
                log,
                drain,
                notifier=Notifier.from_environment(),
                on_started=started,
            )
        )
    finally:
        if pidfile is not None and not pidfile.remove():
            log.info(f"pidfile {pidfile.path} left behind: no permission to remove it")
        log.close()
    return EXIT_OK


def _serve_workers(
    config: Config,
    path: str,
    grace: float | None,
    verbosity: int,
    log: LogSink,
    pidfile: PidFile | None,
) -> int:
    """``trilb serve`` with ``global.workers`` > 1: this process becomes the master
    (:mod:`trilb.master`). It keeps its privileges, to start a worker again: each worker drops
    them once its listeners are bound."""
    from .master import Master

    log.prefix = "master: "
    flags = {VERBOSE: ["-v"], QUIET: ["-q"]}.get(verbosity, [])
    master = Master(
        config,
        path,
        log,
        grace=grace,
        verbosity_flags=flags,
        notifier=Notifier.from_environment(),
    )
    try:
        trio.run(functools.partial(master.run, on_started=pidfile.write if pidfile else None))
    finally:
        if pidfile is not None and not pidfile.remove():
            log.info(f"pidfile {pidfile.path} left behind: no permission to remove it")
        log.close()
    return EXIT_OK


def _worker(args: argparse.Namespace, verbosity: int) -> int:
    """``trilb _worker`` (not for people: the master starts it) runs one worker process."""
    from .worker import run_worker

    tune_for_serving()  # (the master carries no traffic: it keeps the defaults)
    run_worker(args.config, args.index, args.control_fd, args.grace, verbosity)
    return EXIT_OK


def _report(args: argparse.Namespace, exc: TrilbError) -> int:
    if isinstance(exc, ConfigError):
        _print_config_errors(getattr(args, "config", "config"), exc)
        return EXIT_CONFIG
    print(f"trilb: error: {exc}", file=sys.stderr)
    return EXIT_ERROR


def _sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception inside (possibly nested) single-member groups, else None."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


def _check(path: str) -> int:
    config = load_config(path)
    load_frontend_tls(config)  # certificate files are part of the configuration
    compile_rules(config)  # and so are the routes' regular expressions and address ranges
    resolve_identity(config.global_)  # and the user and group to run as
    try:
        AccessLogFormatter(config.log.format, config.log.template)  # and the log template
    except ValueError as exc:
        raise ConfigError.single("log.template", str(exc)) from None
    print(f"{path}: configuration is valid ({_summary(config)})")
    return EXIT_OK


def _summary(config: Config) -> str:
    servers = sum(len(b.servers) for b in config.backends)
    binds = sum(len(f.bind) for f in config.frontends)
    return (
        f"{len(config.frontends)} frontend(s) on {binds} address(es), "
        f"{len(config.backends)} backend(s) with {servers} server(s)"
    )


def _print_config_errors(path: str, exc: ConfigError) -> None:
    count = len(exc.problems)
    print(f"trilb: {path}: {count} error{'s' if count != 1 else ''}:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
