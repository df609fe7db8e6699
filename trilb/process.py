"""What ``trilb serve`` does as a Unix daemon process: the pidfile, and dropping privileges.

Both act on the whole process, so they belong to the command (:mod:`trilb.cli`), never to a
:class:`~trilb.balancer.Balancer`: an application that embeds trilb keeps its own identity.

The order at start-up: :func:`resolve_identity` and :meth:`PidFile.check` before anything is
bound (a typo in ``global.user`` fails at once), then the balancer binds its listeners, opens the
log target and the admin socket as root, then :meth:`PidFile.write`, then :func:`drop_privileges`.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd

import attrs

from .config import GlobalConfig
from .errors import ConfigError, ConfigProblem, StartupError

__all__ = ["Identity", "PidFile", "drop_privileges", "resolve_identity"]


@attrs.frozen(kw_only=True)
class Identity:
    """Who the process becomes: ``global.user`` and ``global.group`` looked up."""

    #: None: keep the user id (only ``group`` was given)
    uid: int | None
    gid: int
    #: the user's name (for its supplementary groups) or None
    user: str | None
    #: as the configuration said it, for messages ("user trilb", "group 1000")
    describe: str


def resolve_identity(config: GlobalConfig) -> Identity | None:
    """Look up ``user`` / ``group``; None without them. A name or id this system does not
    know is a :class:`ConfigError` naming the key. The group defaults to the user's own."""
    problems: list[ConfigProblem] = []
    uid: int | None = None
    user_name: str | None = None
    user_gid: int | None = None
    if config.user is not None:
        try:
            entry = (
                pwd.getpwuid(config.user)
                if isinstance(config.user, int)
                else pwd.getpwnam(config.user)
            )
        except KeyError:
            problems.append(ConfigProblem("global.user", f"no user {config.user!r} on this system"))
        else:
            uid, user_name, user_gid = entry.pw_uid, entry.pw_name, entry.pw_gid
    gid = user_gid
    if config.group is not None:
        try:
            gid = (
                grp.getgrgid(config.group).gr_gid
                if isinstance(config.group, int)
                else grp.getgrnam(config.group).gr_gid
            )
        except KeyError:
            problems.append(
                ConfigProblem("global.group", f"no group {config.group!r} on this system")
            )
    if problems:
        raise ConfigError(problems)
    if gid is None:
        return None
    parts = [] if config.user is None else [f"user {config.user}"]
    if config.group is not None:
        parts.append(f"group {config.group}")
    return Identity(uid=uid, gid=gid, user=user_name, describe=" and ".join(parts))


def check_can_switch(identity: Identity | None) -> Identity | None:
    """What :func:`drop_privileges` will have to do: None when the process already is that
    user and group. :class:`StartupError` when it would have to switch without being root."""
    if identity is None:
        return None
    same_user = identity.uid is None or identity.uid == os.geteuid()
    if same_user and identity.gid == os.getegid():
        return None
    if os.geteuid() != 0:
        key = "global.user" if not same_user else "global.group"
        raise StartupError(f"{key}: trilb needs to start as root to switch to {identity.describe}")
    return identity


def drop_privileges(identity: Identity | None) -> None:
    """Become ``identity`` for good: supplementary groups (the user's, or only the group),
    group id, then user id -- real, effective and saved, so root can't be regained, which is
    checked. :class:`StartupError` if any step fails."""
    if identity is None:
        return
    try:
        if identity.user is not None:
            os.initgroups(identity.user, identity.gid)
        else:
            os.setgroups([identity.gid])
        os.setgid(identity.gid)
        if identity.uid is not None:
            os.setuid(identity.uid)
    except OSError as exc:
        raise StartupError(
            f"global.user: cannot switch to {identity.describe}: {exc.strerror or exc}"
        ) from None
    if identity.uid is None or identity.uid == 0:
        return
    try:
        os.setuid(0)
    except PermissionError:
        return  # as it should be
    raise StartupError(
        f"global.user: could become root again after switching to {identity.describe}; "
        "refusing to run"
    )


class PidFile:
    """``global.pidfile``: the process id and a newline, written atomically (a temporary file
    renamed over it) and removed at exit if it still names this process."""

    __slots__ = ("_pid", "path")

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._pid: int | None = None

    def check(self) -> None:
        """Fail early, before anything is bound, when the pidfile can't be made."""
        folder = os.path.dirname(self.path)
        if not os.path.isdir(folder):
            raise StartupError(f"global.pidfile: cannot write {self.path}: no folder {folder}")

    def write(self) -> None:
        pid = os.getpid()
        temporary = f"{self.path}.{pid}.tmp"
        try:
            with open(temporary, "w", encoding="ascii") as file:
                file.write(f"{pid}\n")
            os.chmod(temporary, 0o644)
            os.replace(temporary, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise StartupError(
                f"global.pidfile: cannot write {self.path}: {exc.strerror or exc}"
            ) from None
        self._pid = pid

    def remove(self) -> bool:
        """Remove the file if this process wrote it and it still holds our pid (a newer
        process may have taken it over). False if it could not (e.g. after dropping
        privileges, its folder is not writable for the new user)."""
        if self._pid is None:
            return True
        try:
            with open(self.path, encoding="ascii") as file:
                if file.read().strip() != str(self._pid):
                    return True  # not ours any more
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except (OSError, ValueError):
            return False
        self._pid = None
        return True
