"""What the master tells a restarted worker again after a reload (trilb.master)."""

from __future__ import annotations

from trilb import Config, loads_config
from trilb.core.admin_commands import ServerRef, parse_command
from trilb.master import _override_key, _still_applied

CONFIG = """
[frontends.web]
bind = "127.0.0.1:8080"
default_backend = "app"
[backends.app]
servers = [
  {{ name = "s1", address = "127.0.0.1:9001", weight = {w1} }},
  {{ name = "s2", address = "127.0.0.1:9002" }},
  {s3}
]
"""


def config(w1: int = 100, s3: bool = True) -> Config:
    s3_line = '{ name = "s3", address = "127.0.0.1:9003" },' if s3 else ""
    return loads_config(CONFIG.format(w1=w1, s3=s3_line))


def key(line: str) -> tuple[str, ServerRef] | None:
    command = parse_command(line.encode())
    assert command is not None
    return _override_key(command)


def test_commands_that_change_a_server_are_remembered_by_kind_and_server() -> None:
    s1 = ServerRef("app", "s1")
    assert key("set server app/s1 weight 50") == ("weight", s1)
    assert key("set server app/s1 weight 20%") == ("weight", s1)
    assert key("disable server app/s1") == ("state", s1)
    assert key("enable server app/s1") == ("state", s1)
    assert key("set server app/s1 state maint") == ("state", s1)
    assert key("disable health app/s1") == ("health", s1)
    assert key("enable health app/s1") == ("health", s1)
    assert key("show stat") is None
    assert key("get weight app/s1") is None


def test_a_reload_keeps_what_workers_keep() -> None:
    overrides = {
        ("weight", ServerRef("app", "s1")): "set server app/s1 weight 10",
        ("weight", ServerRef("app", "s2")): "set server app/s2 weight 10",
        ("state", ServerRef("app", "s1")): "set server app/s1 state drain",
        ("state", ServerRef("app", "s3")): "set server app/s3 state maint",
    }
    kept = _still_applied(overrides, config(), config(w1=200, s3=False))
    assert kept == {
        # s1's weight changed in the file: the file wins; s2's did not: the operator's stays
        ("weight", ServerRef("app", "s2")): "set server app/s2 weight 10",
        ("state", ServerRef("app", "s1")): "set server app/s1 state drain",
        # s3 is gone
    }
