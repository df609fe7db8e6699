"""``trilb.cli.main`` in-process: exit codes and messages for the paths a user can hit."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from trilb import LogSink
from trilb.cli import main
from trilb.core.accesslog import RequestLog

GOOD = """
[frontends.web]
bind = ["127.0.0.1:{port}"]
default_backend = "app"
[backends.app]
servers = [{{ name = "a", address = "127.0.0.1:9" }}]
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "trilb.toml"
    path.write_text(text)
    return str(path)


def test_check_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", write(tmp_path, GOOD.format(port=8080))]) == 0
    out = capsys.readouterr().out
    assert "configuration is valid" in out
    assert "1 frontend(s) on 1 address(es), 1 backend(s) with 1 server(s)" in out


def test_check_invalid_lists_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GOOD.format(port=8080).replace('"app"\n', '"ap"\ntimeout_conect = "1s"\n', 1)
    assert main(["check", write(tmp_path, text)]) == 2
    err = capsys.readouterr().err
    assert "2 errors" in err
    assert "frontends.web.timeout_conect: unknown key (did you mean 'timeout_connect'?)" in err
    assert "frontends.web.default_backend: no backend named 'ap'" in err
    assert "Traceback" not in err


def test_serve_missing_file_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", str(tmp_path / "nope.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_serve_port_in_use_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["-q", "serve", write(tmp_path, GOOD.format(port=port))]) == 1
    err = capsys.readouterr().err
    assert err.startswith("trilb: error: frontends.web.bind[0]: cannot listen on 127.0.0.1:")
    assert "Traceback" not in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("trilb ")


def _record() -> RequestLog:
    return RequestLog(client_ip="127.0.0.1", client_port=1, accept_date=0.0, frontend="web")


@pytest.mark.parametrize(
    ("verbosity", "expected"),
    [
        (-1, ["error"]),
        (0, ["info", "warning", "error"]),
        (1, ["debug", "info", "warning", "error"]),
    ],
)
def test_log_sink_verbosity(
    verbosity: int, expected: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    sink = LogSink("stdout", verbosity=verbosity)
    sink.debug("d")
    sink.info("i")
    sink.warning("w")
    sink.error("e")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" trilb ")[1].split(":")[0] for line in lines] == expected


def test_log_sink_targets(capsys: pytest.CaptureFixture[str]) -> None:
    LogSink("stderr", "json").access(_record())
    LogSink("none").access(_record())
    LogSink("none").error("not shown anywhere")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith('{"client_ip":"127.0.0.1"')


def test_log_sink_survives_a_closed_target(tmp_path: Path) -> None:
    sink = LogSink("stdout")
    with (tmp_path / "log").open("w") as closed:
        pass
    sink._file = closed  # the target went away (e.g. a closed pipe)
    sink.error("does not raise")
    sink.access(_record())
