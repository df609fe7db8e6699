"""Hot reload, the decisions: what a new configuration takes over from the running one. No I/O
here: :meth:`trilb.balancer.Balancer.reload` builds the new runtime and does the swap.

Theory of operation
-------------------

A reload replaces a running :class:`~trilb.config.Config` by a new one while traffic flows. What
the new configuration keeps from the running one is decided here, from the two configurations:

* **Listeners** are matched by their bind :class:`~trilb.config.Address` (port 0 included: the
  same ``127.0.0.1:0`` keeps its ephemeral port). A bind in both keeps its socket -- the very
  listener object moves to the new frontend, so no connection is refused and the kernel's backlog
  holds whatever arrives during the swap; a new bind opens, a bind no longer there closes
  (:func:`plan_listeners`). An address written twice (two ``*:0`` binds) is matched in order,
  a frontend's own bind first.
* **Servers** are matched by (backend name, server name) (:func:`plan_backends`). A matched
  server keeps its counters, response times, state history, operator state, and -- when its
  backend has health checks before and after -- its health verdict and check counts
  (:func:`carried_health`); its idle connections when nothing about connecting to it changed
  (address, TLS, PROXY header, pool settings). Its weight is the new file's, unless the operator
  changed it at run time and the file did not change it (:func:`carried_weight`).
* A backend keeps its **stick table** when it has ``stick`` before and after; the entries of
  servers that went away are dropped, the others follow their server to its new position.
* **Sections that a reload does not apply** (``[log]``, ``[stats]``, ``[admin]``, the process
  settings of ``[global]``) are named by :func:`unapplied_changes`, to be logged as "needs a
  restart".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from ..config import Address, BackendConfig, Config, FrontendConfig, GlobalConfig, ServerConfig
from .health import HealthState

__all__ = [
    "APPLIED_GLOBAL_KEYS",
    "BackendCarry",
    "BindRef",
    "ListenerPlan",
    "ServerCarry",
    "carried_health",
    "carried_weight",
    "plan_backends",
    "plan_listeners",
    "unapplied_changes",
]

#: one bind of a frontend: (frontend name, index in its ``bind`` list)
BindRef = tuple[str, int]

#: the ``[global]`` keys a reload applies; a change of any other one needs a restart
APPLIED_GLOBAL_KEYS = frozenset({"max_connections", "timeout_drain"})


@attrs.frozen(kw_only=True)
class ListenerPlan:
    """Which listeners a reload keeps, opens and closes."""

    #: a bind of the new configuration -> the running bind whose listener(s) it takes over
    keep: Mapping[BindRef, BindRef]
    #: binds of the new configuration to open
    open: tuple[BindRef, ...]
    #: running binds whose listeners close
    close: tuple[BindRef, ...]


def plan_listeners(
    running: Sequence[FrontendConfig], new: Sequence[FrontendConfig]
) -> ListenerPlan:
    """Match the new frontends' binds to the running ones by address (see the module docs)."""
    available: dict[Address, list[BindRef]] = {}
    for fe in running:
        for index, address in enumerate(fe.bind):
            available.setdefault(address, []).append((fe.name, index))
    keep: dict[BindRef, BindRef] = {}
    opened: list[BindRef] = []
    for fe in new:
        for index, address in enumerate(fe.bind):
            candidates = available.get(address)
            if not candidates:
                opened.append((fe.name, index))
                continue
            chosen = next((c for c in candidates if c[0] == fe.name), candidates[0])
            candidates.remove(chosen)
            keep[fe.name, index] = chosen
    kept = set(keep.values())
    closed = tuple(
        (fe.name, index)
        for fe in running
        for index in range(len(fe.bind))
        if (fe.name, index) not in kept
    )
    return ListenerPlan(keep=keep, open=tuple(opened), close=closed)


@attrs.frozen(kw_only=True)
class ServerCarry:
    """A server in both configurations, and what it takes over from its running self."""

    server: str
    #: its positions in the running and the new backend (stick tables name servers by position)
    old_index: int
    new_index: int
    #: its idle connections stay usable: same address, TLS, PROXY header and pool settings
    pool: bool
    #: its backend has health checks before and after: the verdict and the counts carry over
    health: bool


@attrs.frozen(kw_only=True)
class BackendCarry:
    """A backend in both configurations: its servers that are in both, and its stick table."""

    backend: str
    servers: tuple[ServerCarry, ...]
    #: ``stick`` before and after: the table's entries carry over (see :meth:`index_map`)
    stick_table: bool

    def index_map(self) -> dict[int, int]:
        """Running server position -> new position, for the servers that stay."""
        return {s.old_index: s.new_index for s in self.servers}


def plan_backends(running: Config, new: Config) -> tuple[BackendCarry, ...]:
    """The backends and servers of ``new`` that match running ones by name."""
    before = {b.name: b for b in running.backends}
    result = []
    for backend in new.backends:
        old = before.get(backend.name)
        if old is None:
            continue
        positions = {s.name: i for i, s in enumerate(old.servers)}
        servers = []
        for index, server in enumerate(backend.servers):
            old_index = positions.get(server.name)
            if old_index is None:
                continue
            servers.append(
                ServerCarry(
                    server=server.name,
                    old_index=old_index,
                    new_index=index,
                    pool=_same_connections(old, old.servers[old_index], backend, server),
                    health=old.health_check is not None and backend.health_check is not None,
                )
            )
        result.append(
            BackendCarry(
                backend=backend.name,
                servers=tuple(servers),
                stick_table=old.stick is not None and backend.stick is not None,
            )
        )
    return tuple(result)


def _same_connections(
    old_backend: BackendConfig,
    old: ServerConfig,
    new_backend: BackendConfig,
    new: ServerConfig,
) -> bool:
    """Whether an idle connection made for ``old`` is one ``new`` would have made."""
    return (
        old.address == new.address
        and old.tls == new.tls
        and old.send_proxy == new.send_proxy
        and old_backend.pool_max_idle == new_backend.pool_max_idle
        and old_backend.timeouts.pool_idle == new_backend.timeouts.pool_idle
    )


def carried_weight(configured: int, current: int, new_configured: int) -> int:
    """A matched server's weight after a reload: the new file's, except that an operator's change
    at run time (``current`` differs from the running file's ``configured``) survives a reload
    whose file left the weight as it was (as HAProxy's server-state file does)."""
    if current != configured and new_configured == configured:
        return current
    return new_configured


def carried_health(state: HealthState, rise: int, fall: int) -> HealthState:
    """A server's health state under (maybe new) ``rise``/``fall``: the same verdict, and the
    counts towards a change kept as far as the new thresholds allow -- an UP server stays UP (a
    confirmed one is not made unconfirmed), a DOWN one stays DOWN until ``rise`` good checks."""
    carried = HealthState(rise, fall, up=state.up)
    carried.failures = min(state.failures, fall - 1) if state.up else state.failures
    carried.successes = state.successes if state.up else min(state.successes, rise - 1)
    return carried


def unapplied_changes(running: Config, new: Config) -> tuple[str, ...]:
    """The sections (``[log]``, ``[stats]``, ``[admin]``) and ``[global]`` keys that differ
    between the two configurations but that a reload does not apply (they need a restart)."""
    changed = []
    if running.log != new.log:
        changed.append("[log]")
    if running.stats != new.stats:
        changed.append("[stats]")
    if running.admin != new.admin:
        changed.append("[admin]")
    for field in attrs.fields(GlobalConfig):
        if field.name in APPLIED_GLOBAL_KEYS:
            continue
        if getattr(running.global_, field.name) != getattr(new.global_, field.name):
            changed.append(f"global.{field.name}")
    return tuple(changed)
