"""systemd's readiness protocol (``sd_notify``) without libsystemd: datagrams to $NOTIFY_SOCKET.

Theory of operation. systemd starts a ``Type=notify`` (or ``notify-reload``) service with
``NOTIFY_SOCKET`` set to a unix datagram socket: a path (``/run/systemd/notify``) or, starting
with ``@``, an abstract one. The service sends newline-separated ``KEY=VALUE`` assignments:

* ``READY=1`` once it serves (``systemctl start`` returns then, and units ordered after it start),
  and again when a reload has completed;
* ``RELOADING=1`` with ``MONOTONIC_USEC=`` (the CLOCK_MONOTONIC time; systemd 253's
  ``Type=notify-reload`` requires it) when a reload starts;
* ``STOPPING=1`` when it begins to shut down;
* ``STATUS=text`` for ``systemctl status``;
* ``WATCHDOG=1`` at least every ``WATCHDOG_USEC`` microseconds when the unit sets
  ``WatchdogSec=`` (:meth:`Notifier.run_watchdog` does it at half the interval).

Outside systemd (no ``NOTIFY_SOCKET``) a :class:`Notifier` does nothing. Sending never blocks and
never raises: a notification that can't be delivered is lost (as with ``sd_notify``), and the
method returns False. Each message goes out on a fresh socket, as libsystemd does, so a systemd
that re-executed itself still gets the next one.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import trio

__all__ = ["Notifier"]


class Notifier:
    """Sends service state notifications to systemd; a no-op when ``address`` is None.

    ``address``: $NOTIFY_SOCKET's value (an absolute path, or ``@name`` for an abstract
    socket). ``watchdog_interval``: seconds within which systemd wants a ``WATCHDOG=1``, or None.
    """

    __slots__ = ("_address", "watchdog_interval")

    def __init__(self, address: str | None = None, *, watchdog_interval: float | None = None):
        self._address: str | bytes | None = None
        if address is not None and address.startswith("@") and len(address) > 1:
            self._address = b"\0" + address[1:].encode()  # Linux's abstract namespace
        elif address is not None and address.startswith("/"):
            self._address = address
        # (anything else, "vsock:..." say, is not for us: then notifications go nowhere)
        self.watchdog_interval = watchdog_interval

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier systemd asked for in the environment (``os.environ`` by default):
        ``NOTIFY_SOCKET``, and ``WATCHDOG_USEC`` unless ``WATCHDOG_PID`` names another
        process."""
        env = os.environ if environ is None else environ
        interval = None
        watchdog_pid = env.get("WATCHDOG_PID", "")
        if not watchdog_pid or watchdog_pid == str(os.getpid()):
            try:
                usec = int(env.get("WATCHDOG_USEC", ""))
            except ValueError:
                usec = 0
            if usec > 0:
                interval = usec / 1_000_000
        return cls(env.get("NOTIFY_SOCKET"), watchdog_interval=interval)

    @property
    def enabled(self) -> bool:
        """Whether there is a socket to notify (running under systemd)."""
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; True if it was delivered."""
        if self._address is None or not assignments:
            return False
        message = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)  # a full queue loses the message, never the event loop
                sock.sendto(message, self._address)
        except OSError:
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: serving (at start, and when a reload has completed)."""
        return self.notify("READY=1", *_status(status))

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1`` and ``MONOTONIC_USEC``: a reload started; follow it with
        :meth:`ready` when it is over, whether it succeeded or not."""
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={now}", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutting down (a drain started)."""
        return self.notify("STOPPING=1", *_status(status))

    def status(self, text: str) -> bool:
        """``STATUS=text``: one line for ``systemctl status``."""
        return self.notify(*_status(text))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: still alive."""
        return self.notify("WATCHDOG=1")

    async def run_watchdog(self) -> None:
        """Send ``WATCHDOG=1`` at half the watchdog interval until cancelled (returns at once
        without one). Run it in the nursery of what it vouches for: the pings then stop when
        that stops, or when its event loop is stuck -- which is what the watchdog is for."""
        if self._address is None or self.watchdog_interval is None:
            return
        while True:
            self.watchdog()
            await trio.sleep(self.watchdog_interval / 2)

    def __repr__(self) -> str:
        where = "disabled" if self._address is None else repr(self._address)
        return f"<Notifier {where} watchdog={self.watchdog_interval}>"


def _status(text: str | None) -> tuple[str, ...]:
    # one line: a newline would start another assignment
    return () if text is None else (f"STATUS={' '.join(text.splitlines())}",)
