"""The admin socket of ``trilb serve``'s master process (``global.workers`` > 1).

The same commands as a single balancer's (:mod:`trilb.admin`), answered for the whole set of
workers:

* ``show stat`` and ``show info``: the totals and a part per worker, from figures the workers
  are asked for afresh;
* ``reload``: the master's reload (the file checked once, then every worker switched);
* every other command goes to each worker, whose answers are given once when they agree (the
  usual case: ``set weight``, ``disable health``...) and one after the other, each under a
  ``# worker N (pid P)`` line, when they differ (``show sessions``; a server the workers'
  health checks see differently for a moment).
"""

from __future__ import annotations

from .admin import AdminConnections, info_lines, stat_rows
from .control_link import LinkClosed, WorkerRequestError
from .core.admin_commands import (
    CommandError,
    Help,
    Quit,
    Reload,
    ShowInfo,
    ShowStat,
    answer_lines,
    error_answer,
    help_lines,
    parse_command,
    render_csv,
    render_json,
)
from .master import Master, ReloadFailed, WorkerSlot

__all__ = ["ClusterAdmin", "merge_answers"]


class ClusterAdmin(AdminConnections):
    """The master's admin connections: commands run on the workers."""

    def __init__(self, master: Master) -> None:
        super().__init__(master.log)
        self.master = master

    async def answer(self, line: bytes) -> tuple[bytes, bool]:
        master = self.master
        try:
            command = parse_command(line)
            match command:
                case None:
                    return answer_lines([]), True
                case Quit():
                    return b"", False
                case Help():
                    return answer_lines(help_lines()), True
                case Reload():
                    try:
                        return answer_lines([await master.reload()]), True
                    except ReloadFailed as exc:
                        raise CommandError(str(exc)) from None
                case ShowStat() | ShowInfo():
                    await master.refresh()
                    stats = master.statistics()
                    if isinstance(command, ShowInfo):
                        lines = info_lines(stats, master.config, master.uptime, master.draining)
                    elif command.format == "json":
                        lines = render_json(stat_rows(stats, master.draining))
                    else:
                        lines = render_csv(stat_rows(stats, master.draining))
                    return answer_lines(lines), True
            results = await master.admin_command(line.decode("utf-8", "replace").strip())
            return merge_answers(results), True
        except CommandError as exc:
            return error_answer(str(exc)), True
        except Exception as exc:  # noqa: BLE001 - a bug in one command must not end the master
            self.log.error(f"admin socket: command {line[:80]!r} failed: {exc!r}")
            return error_answer(f"Internal error: {exc!r}."), True


def merge_answers(results: list[tuple[WorkerSlot, object]]) -> bytes:
    """One answer from the workers' answers (text as sent, or the exception of a worker that
    could not answer): the answer itself when they are all the same, else each worker's."""
    if not results:
        return error_answer("No worker is running (they are starting or restarting).")
    texts = [result for _, result in results if isinstance(result, str)]
    if len(texts) == len(results) and len(set(texts)) == 1:
        return texts[0].encode()
    lines: list[str] = []
    for slot, result in results:
        lines.append(f"# worker {slot.index} (pid {slot.pid})")
        if isinstance(result, str):
            lines += result.splitlines()
        else:
            lines.append(f"Error: {_failure(result)}")
    return answer_lines(lines)


def _failure(error: object) -> str:
    if isinstance(error, LinkClosed):
        return f"the worker went away ({error})"
    if isinstance(error, WorkerRequestError):
        return str(error)
    return "no answer in time"
