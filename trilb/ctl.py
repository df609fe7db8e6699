"""``trilb ctl``: send one command to a running balancer's admin socket and print the answer.

A plain blocking client (it is a command-line tool): connect, send the line, read until the
empty line that ends an answer (or until the server closes), print. An error answer becomes a
:class:`CtlError`, which ``trilb`` prints as ``trilb: error: ...`` and exits with 1.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence

from .config import load_config
from .core.admin_commands import is_error_answer
from .errors import TrilbError

__all__ = ["DEFAULT_SOCKET", "TIMEOUT", "CtlError", "ctl", "send_command"]

#: where the admin socket is when neither ``--socket`` nor ``-c CONFIG`` says
DEFAULT_SOCKET = "/run/trilb/admin.sock"

#: how long the whole exchange may take (the server answers at once; this is for a balancer
#: that is stuck, or a path that is not a trilb's socket)
TIMEOUT = 10.0

#: bytes asked for per read
RECEIVE_SIZE = 64 * 1024


class CtlError(TrilbError):
    """The admin socket can't be reached, or it answered with an error."""


def ctl(socket_path: str | None, config_path: str | None, words: Sequence[str]) -> str:
    """The answer to the command ``words`` (without its final empty line), from the socket
    ``socket_path``, else the ``[admin] socket`` of ``config_path``, else
    :data:`DEFAULT_SOCKET`. Raises CtlError (and ConfigError for a bad config)."""
    if socket_path is None:
        socket_path = DEFAULT_SOCKET
        if config_path is not None:
            admin = load_config(config_path).admin
            if admin is None:
                raise CtlError(f"{config_path} has no [admin] socket; use --socket PATH")
            socket_path = admin.socket
    answer = send_command(socket_path, " ".join(words))
    error = is_error_answer(answer)
    if error is not None:
        raise CtlError(error)
    return answer.rstrip("\n")


def send_command(path: str, command: str, *, timeout: float = TIMEOUT) -> str:
    """Send ``command`` to the admin socket at ``path`` and return the answer as received
    (its final empty line included if it came). CtlError when the socket can't be reached or
    does not answer in time."""
    if "\n" in command or "\r" in command:
        raise CtlError("a command is one line")
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            try:
                sock.sendall(command.encode("utf-8") + b"\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed at once (too many clients): the reason may be waiting to be read
            received = bytearray()
            # an answer ends with an empty line; "\n\n" can't come earlier (no empty lines inside)
            while not received.endswith(b"\n\n") and received != b"\n":
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                try:
                    data = sock.recv(RECEIVE_SIZE)
                except ConnectionResetError:
                    if not received:
                        raise
                    break  # closed with our command unread, after its answer: that will do
                if not data:
                    break
                received += data
    except TimeoutError:
        raise CtlError(f"no answer from the admin socket {path} within {timeout:g}s") from None
    except OSError as exc:
        raise CtlError(
            f"cannot reach the admin socket {path}: {exc.strerror or exc}"
            " (is trilb running with an [admin] socket?)"
        ) from None
    return received.decode("utf-8", "replace")
