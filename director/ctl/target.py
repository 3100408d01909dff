"""What the control plane needs from the daemon: the running configuration, a way to
commit a new one, snapshots for listings, and ``zero``.

``director.ctl.dispatch`` turns a request into calls on this; the daemon implements it.
"""

from __future__ import annotations

from typing import Any, Protocol

from director.ctl.snapshot import Snapshot
from director.model.config import Config


class ControlTarget(Protocol):
    @property
    def config(self) -> Config: ...

    def commit(self, config: Config) -> None:
        """Apply a validated configuration to the live tables and persist it atomically."""

    def snapshot(self, *, conns: bool, offset: int = 0, limit: int = 2048) -> Snapshot:
        """The tables; with ``conns``, the connection entries ``offset`` to
        ``offset + limit`` (director.ctl.report.snapshot)."""

    def zero(self, key: tuple[str, str, int] | None) -> None:
        """ipvsadm -Z: zero the counters of one service (by ServiceConf.key) or of all."""

    def which(
        self, protocol: str, client: tuple[str, int], virtual: tuple[str, int], mark: int
    ) -> dict[str, Any] | None:
        """The real server a new packet with this tuple would get now, changing nothing."""

    def sysctls(self, changes: dict[str, str]) -> dict[str, int | bool]:
        """Apply ``changes`` (all or none; ValueError names a bad one) and return all."""

    def sync_daemon(self, command: str, args: dict[str, Any]) -> Any:
        """The connection sync daemons: "start" (args: director.model.sync's), "stop"
        ({"state": ...}) or "list" (their settings, as ipvsadm -L --daemon shows them)."""

    def checks(self) -> list[dict[str, Any]]:
        """The health checks and what they found (director.health.manager)."""
