"""The daemon's own control target, without root: ``director.shell.daemon.Daemon``.

Everything a control request reaches is the production code: the pure ``Director``
(configure, check, which, zero, sysctls), ``director.ctl.report`` for the listings, the
health manager, and the rules file written atomically (under the test's tmp_path), so a
test can only pass with a configuration the daemon itself accepts.  Only the two sides
that need the kernel are in memory:

- ``MemoryHooks``: the netfilter hooks record what they would select
  (``director.shell.netfilter.selection``, the production computation) instead of
  loading iptables rules and ipsets;
- ``StaticRoutes``: route lookups (and the host's links) answer from a table instead
  of netlink (``Routes.annotate``, what the daemon does with it, stays).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from director.core.route import Route
from director.core.shard import Shards
from director.core.tunneled import Link
from director.ctl.ipvsadm import load_rules
from director.model.config import Config
from director.shell.board import SlotKey
from director.shell.daemon import Daemon, Settings
from director.shell.netfilter import Entry, Hooks, fast_dnat_rules, selection
from director.shell.netlink import Routes

# A real server on a directly connected network of the director (eth1, 198.18.0.1).
CONNECTED = Route(ifindex=2, source=socket.inet_aton("198.18.0.1"), mtu=1500)


@dataclass
class MemoryHooks(Hooks):
    """The hooks, kept in memory: ``selected`` is what the ipsets and the fwmark chain
    would hold after the last sync, ``dnat`` the fast path's DNAT chain."""

    installed: bool = False
    selected: tuple[dict[str, set[Entry]], set[int]] = field(default_factory=lambda: ({}, set()))
    dnat: list[str] = field(default_factory=list)
    tunneled_devs: frozenset[str] = frozenset()  # the tunnel sets' devices

    def install(self) -> None:
        self.installed = True

    def remove(self) -> None:
        self.installed = False
        self.selected = ({}, set())
        self.dnat = []

    def sync(self, config: Config, slots: dict[SlotKey, int] | None = None) -> None:
        self.selected = selection(config, self.fast)
        self.dnat = fast_dnat_rules(config, slots or {}) if self.fast else []

    def reshard(self, shards: Shards) -> None:
        self.shards = shards

    def tunneled(self, devices: frozenset[str]) -> None:
        self.tunneled_devs = devices


class StaticRoutes(Routes):
    """Route lookups from a table: ``routes[addr]`` (None: no route), else ``default``;
    the host's devices from ``links``."""

    def __init__(
        self,
        routes: Mapping[str, Route | None] | None = None,
        default: Route | None = CONNECTED,
        links: list[Link] | None = None,
    ) -> None:
        self.routes = dict(routes or {})
        self.default = default
        self.link_table = list(links or [])

    def close(self) -> None:
        pass

    def lookup(self, addr: str) -> Route | None:
        return self.routes.get(addr, self.default)

    def links(self) -> list[Link] | None:
        return list(self.link_table)


def settings_in(base: Path) -> Settings:
    """Settings whose every file lives under ``base`` (a tmp_path)."""
    return Settings(
        control_socket=base / "control.sock",
        rules=base / "rules",
        state_dir=base / "state",
        supervise=False,
        workers=1,
    )


def make_daemon(
    settings: Settings, rules: str = "", *, routes: StaticRoutes | None = None
) -> Daemon:
    """A daemon with in-memory hooks and routes, ``rules`` (ipvsadm-save lines)
    committed through its own ``commit``, as ``dirctl restore`` would."""
    daemon = Daemon(
        settings,
        hooks=MemoryHooks(queue=settings.queue_num, mark=settings.send_mark),
        routes=routes if routes is not None else StaticRoutes(),
    )
    if rules:
        daemon.commit(load_rules(rules))
    return daemon


def close(daemon: Daemon) -> None:
    """Release what the daemon holds without a run: the health runner's socket pair."""
    daemon.health.stop()
