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
    Command,
    CommandError,
    Help,
    Reload,
    ShowInfo,
    ShowStat,
    answer_lines,
    error_answer,
    help_lines,
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

    async def respond(self, command: Command, line: bytes) -> bytes:
        master = self.master
        match command:
            case Help():
                return answer_lines(help_lines())
            case Reload():
                try:
                    return answer_lines([await master.reload()])
                except ReloadFailed as exc:
                    raise CommandError(str(exc)) from None
            case ShowInfo():
                await master.refresh()
                stats = master.statistics()
                return answer_lines(
                    info_lines(stats, master.config, master.uptime, master.draining)
                )
            case ShowStat(format=form):
                await master.refresh()
                rows = stat_rows(master.statistics(), master.draining)
                return answer_lines(render_json(rows) if form == "json" else render_csv(rows))
        text = line.decode("utf-8", "replace").strip()
        return merge_answers(await master.admin_command(text, command))


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
