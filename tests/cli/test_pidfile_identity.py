"""trilb.process in this process: the pidfile, and looking up ``global.user`` / ``group``.

(Dropping privileges changes the whole process: tests/e2e/test_process.py does that to a
``trilb serve`` subprocess.)
"""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

import pytest

from trilb.cli import main
from trilb.config import GlobalConfig
from trilb.errors import ConfigError, StartupError
from trilb.process import Identity, PidFile, check_can_switch, resolve_identity

ME = pwd.getpwuid(os.geteuid())
MY_GROUP = grp.getgrgid(os.getegid())


def test_pidfile_written_and_removed(tmp_path: Path) -> None:
    pidfile = PidFile(str(tmp_path / "trilb.pid"))
    pidfile.check()
    pidfile.write()
    assert (tmp_path / "trilb.pid").read_text() == f"{os.getpid()}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["trilb.pid"]  # no temporary file left
    assert pidfile.remove()
    assert list(tmp_path.iterdir()) == []
    assert pidfile.remove()  # again: nothing to do


def test_pidfile_replaces_a_stale_one(tmp_path: Path) -> None:
    (tmp_path / "trilb.pid").write_text("999999\n")
    pidfile = PidFile(str(tmp_path / "trilb.pid"))
    pidfile.write()
    assert (tmp_path / "trilb.pid").read_text() == f"{os.getpid()}\n"


def test_pidfile_of_another_process_is_left(tmp_path: Path) -> None:
    pidfile = PidFile(str(tmp_path / "trilb.pid"))
    pidfile.write()
    (tmp_path / "trilb.pid").write_text("12345\n")  # a newer trilb took the path over
    assert pidfile.remove()
    assert (tmp_path / "trilb.pid").read_text() == "12345\n"


def test_pidfile_never_written_is_not_removed(tmp_path: Path) -> None:
    (tmp_path / "trilb.pid").write_text(f"{os.getpid()}\n")
    assert PidFile(str(tmp_path / "trilb.pid")).remove()
    assert (tmp_path / "trilb.pid").exists()


def test_pidfile_in_a_missing_folder(tmp_path: Path) -> None:
    pidfile = PidFile(str(tmp_path / "missing" / "trilb.pid"))
    with pytest.raises(StartupError, match=r"^global\.pidfile: cannot write .*missing"):
        pidfile.check()
    with pytest.raises(StartupError, match=r"^global\.pidfile: cannot write"):
        pidfile.write()


def test_no_user_no_group() -> None:
    assert resolve_identity(GlobalConfig()) is None
    assert check_can_switch(None) is None


def test_user_by_name_and_by_id() -> None:
    by_name = resolve_identity(GlobalConfig(user=ME.pw_name))
    assert by_name == Identity(
        uid=ME.pw_uid, gid=ME.pw_gid, user=ME.pw_name, describe=f"user {ME.pw_name}"
    )
    by_id = resolve_identity(GlobalConfig(user=ME.pw_uid))
    assert by_id is not None
    assert (by_id.uid, by_id.gid, by_id.user) == (ME.pw_uid, ME.pw_gid, ME.pw_name)


def test_group_overrides_the_users() -> None:
    identity = resolve_identity(GlobalConfig(user=ME.pw_name, group=MY_GROUP.gr_name))
    assert identity is not None
    assert (identity.uid, identity.gid) == (ME.pw_uid, MY_GROUP.gr_gid)
    assert identity.describe == f"user {ME.pw_name} and group {MY_GROUP.gr_name}"


def test_group_alone_keeps_the_user() -> None:
    identity = resolve_identity(GlobalConfig(group=MY_GROUP.gr_gid))
    assert identity == Identity(
        uid=None, gid=MY_GROUP.gr_gid, user=None, describe=f"group {MY_GROUP.gr_gid}"
    )


def test_unknown_user_and_group_are_config_errors() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_identity(GlobalConfig(user="no-such-user-trilb", group="no-such-group-trilb"))
    assert [str(p) for p in info.value.problems] == [
        "global.user: no user 'no-such-user-trilb' on this system",
        "global.group: no group 'no-such-group-trilb' on this system",
    ]


def test_switching_to_oneself_is_nothing_to_do() -> None:
    identity = resolve_identity(GlobalConfig(user=ME.pw_uid, group=os.getegid()))
    assert check_can_switch(identity) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: switching users")
def test_root_may_switch() -> None:
    identity = resolve_identity(GlobalConfig(user="nobody"))
    assert check_can_switch(identity) is identity


def test_switching_without_root_is_a_startup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """(tests/e2e/test_process.py runs it for real where the machine allows.)"""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "getegid", lambda: 1000)
    other = Identity(uid=1001, gid=1000, user="someone", describe="user someone")
    with pytest.raises(
        StartupError,
        match=r"^global\.user: trilb needs to start as root to switch to user someone$",
    ):
        check_can_switch(other)
    group = Identity(uid=None, gid=1001, user=None, describe="group staff")
    with pytest.raises(StartupError, match=r"^global\.group: .* to switch to group staff$"):
        check_can_switch(group)
    assert check_can_switch(Identity(uid=1000, gid=1000, user="me", describe="user me")) is None


CONFIG = """
[global]
{global_}

[frontends.web]
bind = "127.0.0.1:8080"
default_backend = "app"

[backends.app]
servers = [{{ name = "a", address = "127.0.0.1:9" }}]
"""


def test_check_looks_the_user_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "trilb.toml"
    path.write_text(CONFIG.format(global_=f'user = "{ME.pw_name}"\ntimeout_drain = "10s"'))
    assert main(["check", str(path)]) == 0
    assert "configuration is valid" in capsys.readouterr().out
    path.write_text(CONFIG.format(global_='user = "no-such-user-trilb"'))
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "global.user: no user 'no-such-user-trilb' on this system" in err
