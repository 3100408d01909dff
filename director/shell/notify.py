"""systemd's notify protocol (sd_notify(3)): READY, STOPPING, WATCHDOG, STATUS.

Does nothing when the daemon does not run under a notify-type unit.
"""

from __future__ import annotations

import contextlib
import os
import socket


class Notifier:
    def __init__(self) -> None:
        path = os.environ.get("NOTIFY_SOCKET", "")
        if path.startswith("@"):
            path = "\0" + path[1:]
        self.path = path

    def send(self, message: str) -> None:
        if not self.path:
            return
        with (
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
            contextlib.suppress(OSError),
        ):
            sock.sendto(message.encode(), self.path)

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")
