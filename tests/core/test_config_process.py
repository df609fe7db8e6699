"""The ``[global]`` keys of the process: ``timeout_drain``, ``user``, ``group``."""

from __future__ import annotations

import pytest

from trilb.config import GlobalConfig, loads_config
from trilb.errors import ConfigError

MINIMAL_TOML = """
[frontends.web]
bind = "127.0.0.1:0"
default_backend = "app"

[backends.app]
servers = [{ name = "s1", address = "127.0.0.1:8080" }]
"""


def global_(lines: str) -> GlobalConfig:
    return loads_config(f"[global]\n{lines}\n{MINIMAL_TOML}").global_


def test_defaults() -> None:
    config = loads_config(MINIMAL_TOML).global_
    assert config.timeout_drain == 30.0
    assert config.user is None
    assert config.group is None


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ('timeout_drain = "1s"', GlobalConfig(timeout_drain=1.0)),
        ('timeout_drain = "250ms"', GlobalConfig(timeout_drain=0.25)),
        ('timeout_drain = "2m"', GlobalConfig(timeout_drain=120.0)),
        ('user = "trilb"', GlobalConfig(user="trilb")),
        ('user = "trilb"\ngroup = "ssl-cert"', GlobalConfig(user="trilb", group="ssl-cert")),
        ("user = 65534\ngroup = 0", GlobalConfig(user=65534, group=0)),
        ('group = "www-data"', GlobalConfig(group="www-data")),
    ],
)
def test_values(lines: str, expected: GlobalConfig) -> None:
    assert global_(lines) == expected


@pytest.mark.parametrize(
    ("lines", "key_path", "message"),
    [
        ("timeout_drain = 30", "global.timeout_drain", 'must be a duration string like "5s"'),
        ('timeout_drain = "0s"', "global.timeout_drain", "must be longer than 0"),
        ('timeout_drain = "soon"', "global.timeout_drain", '"soon"'),
        ('user = ""', "global.user", 'must be a name like "trilb" or a numeric id, got ""'),
        ('user = "no body"', "global.user", "must be a name"),
        ("user = -1", "global.user", "must be a name"),
        ("user = true", "global.user", "got true"),
        ('group = ["a"]', "global.group", "must be a name"),
        ('uid = "trilb"', "global.uid", "unknown key"),
    ],
)
def test_bad_values(lines: str, key_path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        global_(lines)
    (problem,) = info.value.problems
    assert problem.key_path == key_path
    assert message in problem.message
