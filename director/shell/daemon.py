"""``directord``: the daemon that ties the core to the kernel.

At start it installs the netfilter hooks, binds the NFQUEUE worker, loads the rules
file and opens the control socket; then one loop serves packets, control requests and
a one-second tick (defences, rates, metrics, systemd watchdog); the connection
collector runs in slices between packets.  Signal handlers only set a flag; the loop
acts on it.  On SIGTERM it saves the connection table, removes the hooks (or, with
``--on-stop keep``, leaves them holding traffic for the next start, as the shipped
systemd unit does) and exits 0.

Nothing that goes wrong in one turn of the loop ends it: an exception in a selector
callback, in a collector slice, in a step of the tick or in the health hand-off is
logged and counted (``director_loop_errors_total``) and the loop goes on.  A change is
all or nothing: ``commit`` changes the hooks, then the rules file, and undoes the hooks
if either fails, before the core's tables are touched.  Runtime ``dirctl sysctl``
changes are kept in ``<state-dir>/sysctl.json`` and applied over the file's
``[sysctl]`` at start.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import grp
import json
import logging
import os
import selectors
import signal
import socket
import sys
import textwrap
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any, get_type_hints

from director.core import conn_dump, estimator, proto_tcp
from director.core.conn import COLLECT_SLICE
from director.core.service import PROTO_NUMBERS, pack_addr, unpack_addr
from director.core.shard import MAX_WORKERS, Shards, dotted, hex6
from director.core.sync import mixed_family as sync_mixed_family
from director.core.sysctl import Sysctls
from director.core.tunneled import tunneled_devices
from director.core.xmit import unreachable
from director.ctl.ipvsadm import format_save, load_rules
from director.ctl.report import CONN_PAGE, conn_page, dest_dict, snapshot
from director.ctl.snapshot import Snapshot
from director.health.manager import HealthManager
from director.model.config import Config, ConfigError
from director.model.sync import STATES as SYNC_STATES
from director.model.sync import DaemonConf, parse_daemon
from director.shell import board, fastpath, status
from director.shell.board import Board, CountPacer, SlotKey, Slots
from director.shell.control import ControlServer
from director.shell.metrics import MetricsServer, add_reports, take_sample
from director.shell.netfilter import Hooks, reply_queue
from director.shell.netlink import Neighbours, Routes
from director.shell.nfqueue import read_queue_table
from director.shell.notify import Notifier
from director.shell.peer import (
    Peer,
    PeerError,
    available_pages,
    build_director,
    fan_out,
    guarded,
    leaving,
    settle_garbage,
    table_share,
)
from director.shell.persist import atomic_write
from director.shell.supervise import EXIT_CRASH, supervise
from director.shell.sync import SyncDaemon
from director.shell.sync import apply as sync_apply
from director.shell.worker import Worker, queue_sample

log = logging.getLogger("directord")


def _shard_bits(shards: Shards) -> str:
    """The shard bits of both families, for the log: ``0.0.0.3 (IPv6 ::3)``."""
    return f"{dotted(shards.mask)} (IPv6 {hex6(shards.mask6)})"


EXIT_OK = 0
EXIT_SETUP = 1  # could not install hooks, bind the queue or open the socket
EXIT_USAGE = 2  # bad option, bad config file or bad rules file
EXIT_STOP_FAILED = 1  # stopped, but the connection table could not be saved

TICK = 1.0


@dataclass
class Settings:
    """Daemon options; each is a command-line option and a key of the TOML file."""

    control_socket: Path = Path("/run/director/control.sock")
    rules: Path = Path("/etc/director/rules")
    state_dir: Path = Path("/var/lib/director")
    metrics_listen: str = ""
    queue_num: int = 0
    send_mark: int = 0x4C56  # "LV": packets the worker sends itself
    # Per-state TCP timeouts beyond ipvsadm --set's two (the old
    # /proc/sys/net/ipv4/vs/timeout_* knobs), e.g. {"TIME_WAIT": 5}.
    tcp_timeouts: dict[str, int] = field(default_factory=dict)
    # IPVS's sysctls (director.core.sysctl), e.g. {"expire_nodest_conn": 1}; also
    # changed at run time with `dirctl sysctl NAME=VALUE`.
    sysctl: dict[str, str] = field(default_factory=dict)
    # While no worker is bound to the queue (a restart, a crash): "hold" drops the
    # virtual services' packets, so TCP sends them again once a worker is back;
    # "bypass" lets them on to the kernel, whose own stack answers (resets).
    queue_policy: str = "hold"
    # At SIGTERM: "remove" takes the hooks out (the director stops serving);
    # "keep" leaves them holding traffic for the next start, which also restores the
    # connection table, so that a restart drops no connection.
    on_stop: str = "remove"
    # A group whose members may use the control socket besides root ("" = root only).
    control_group: str = ""
    # Run the daemon under a supervisor process that starts it again if it dies.
    supervise: bool = True
    # The most memory the connection table may take, in MiB: new connections beyond it
    # are dropped, and the automatic DoS defences count what is left of it as the
    # memory available (with the host's own MemAvailable, whichever is less).
    conn_table_memory: int = 256
    # Worker processes, each serving the packets of a shard of clients on its own pair
    # of queues (queue_num + 2 i and the next): by default one per CPU.
    workers: int = field(default_factory=lambda: default_workers())
    # "kernel": the first packet of a NAT flow is scheduled here, conntrack carries the
    # rest (director.shell.fastpath); "off": every packet passes a worker, as in IPVS.
    fast_path: str = "off"
    # The FTP helper's ports (ip_vs_ftp's ports=, comma-separated; "" = no helper): NAT
    # connections to a virtual port among them have their PASV/PORT handled.
    ftp_ports: str = "21"

    def check(self) -> None:
        try:
            Sysctls().updated(self.sysctl)
        except ValueError as err:
            raise ConfigError(f"sysctl: {err}") from None
        ftp_port_list(self.ftp_ports)
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"workers must be 1 to {MAX_WORKERS}")
        if not 0 <= self.queue_num <= 65536 - 2 * self.workers:
            raise ConfigError(
                f"queue_num must be 0 to {65536 - 2 * self.workers} (each worker takes two "
                "queues from it on: requests, replies)"
            )
        if self.conn_table_memory < 1:
            raise ConfigError("conn_table_memory must be at least 1 MiB")
        for name, allowed in (("queue_policy", QUEUE_POLICIES), ("on_stop", STOP_POLICIES),
                              ("fast_path", FAST_PATHS)):  # fmt: skip
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}")
        if self.control_group:
            try:
                grp.getgrnam(self.control_group)
            except KeyError:
                raise ConfigError(f"control_group: no group {self.control_group!r}") from None


def default_workers() -> int:
    """One worker per CPU this process may run on, at most MAX_WORKERS."""
    return max(1, min(len(os.sched_getaffinity(0)), MAX_WORKERS))


QUEUE_POLICIES = ("hold", "bypass")
STOP_POLICIES = ("remove", "keep")
FAST_PATHS = ("off", "kernel")
CONNS_FILE = "conns.json"
DEFAULT_CONFIG = Path("/etc/director/director.toml")
SYSCTL_FILE = "sysctl.json"  # the `dirctl sysctl` changes, kept across restarts
SYNC_FILE = "sync.json"  # the sync daemons `dirctl start-daemon` started, for the next start


# What each setting does, for --help; the TOML file takes the same names as keys.
# Every field of Settings has one (tests/shell/test_settings.py checks it).
SETTING_HELP: dict[str, tuple[str, str]] = {  # field: (metavar, help)
    "control_socket": ("PATH", "the Unix socket dirctl talks to"),
    "rules": ("PATH", "the rules file (ipvsadm-save lines), read at start, rewritten on "
              "every change"),
    "state_dir": ("DIR", "where the connection table is saved at stop and read at start"),
    "metrics_listen": ("HOST:PORT", "serve Prometheus /metrics there (off when empty)"),
    "queue_num": ("N", "the NFQUEUE number of requests; NAT replies use the next one"),
    "send_mark": ("MARK", "firewall mark of the packets the worker sends itself"),
    "tcp_timeouts": ("STATE=SECONDS", "a TCP state's timeout beyond ipvsadm --set's "
                     "(e.g. TIME_WAIT=5); repeatable"),
    "sysctl": ("", "IPVS's sysctls (no option: the TOML table, or dirctl sysctl)"),
    "queue_policy": ("", "while no worker is bound (a restart): hold the services' "
                     "packets (TCP sends them again) or bypass them to the host's stack"),
    "on_stop": ("", "at SIGTERM, remove the hooks (the services stop) or keep them "
                "holding traffic for the next start (a restart drops no connection)"),
    "control_group": ("GROUP", "a group whose members may use the control socket too"),
    "supervise": ("", "run under the supervisor process, which starts a daemon that "
                  "died again (--no-supervise: not)"),
    "conn_table_memory": ("MIB", "the most memory the connection table may take"),
    "fast_path": ("", "kernel: NAT flows are scheduled by their first packet and carried by "
                  "conntrack from then on (README: the kernel fast path); off: every packet "
                  "passes a worker"),
    "ftp_ports": ("PORT,...", "the FTP helper's ports (ip_vs_ftp's ports=): PASV, EPSV, "
                  "PORT and EPRT of NAT services on them are handled; '' turns it off"),
    "workers": ("N", f"worker processes, each serving a shard of clients on two queues "
                f"(at most {MAX_WORKERS}; the default is one per CPU)"),
}  # fmt: skip


def _shown(name: str, value: object) -> str:
    """A default as the TOML file writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return hex(value) if name == "send_mark" else str(value)
    return json.dumps(str(value))


def _wrapped(words: Sequence[str]) -> list[str]:
    return textwrap.wrap(", ".join(words), width=79, initial_indent=" " * 19,
                         subsequent_indent=" " * 19)  # fmt: skip


def _epilog() -> str:
    defaults = Settings()
    keys = [
        f"  {f.name} = {_shown(f.name, getattr(defaults, f.name))}"
        for f in fields(Settings)
        if not isinstance(getattr(defaults, f.name), dict)
    ]
    return "\n".join(
        [
            f"The TOML file (--config; {DEFAULT_CONFIG} if present) takes every",
            "setting as a key ('-' or '_' alike); the command line wins.  Keys, defaults:",
            *keys,
            "  [tcp_timeouts]   STATE = SECONDS, STATE one of",
            *_wrapped(proto_tcp.STATE_NAMES),
            "  [sysctl]         NAME = VALUE, IPVS's (dirctl sysctl shows them), NAME one of",
            *_wrapped([f.name for f in fields(Sysctls)]),
            "",
            "directord --remove-hooks takes out the hooks a daemon stopped with",
            "--on-stop keep left in place (systemd/director-hooks.service runs it).",
        ]
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="directord",
        description="director's daemon: the NFQUEUE verdict worker and control socket\n"
        "(IPVS in userspace).  Runs in the foreground until SIGTERM.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = Settings()

    def option(name: str, **kwargs: Any) -> None:
        metavar, text = SETTING_HELP[name]
        default = getattr(defaults, name)
        shown = f" (default {_shown(name, default)})" if default not in ("", {}) else ""
        parser.add_argument(
            "--" + name.replace("_", "-"), metavar=metavar or None, help=text + shown, **kwargs
        )

    parser.add_argument(
        "--config", type=Path, default=None, metavar="PATH", help="the TOML settings file"
    )
    option("control_socket", type=Path)
    option("rules", type=Path)
    option("state_dir", type=Path)
    option("metrics_listen")
    option("queue_num", type=int)
    option("send_mark", type=lambda s: int(s, 0))
    parser.add_argument(
        "--tcp-timeout",
        action="append",
        default=[],
        metavar=SETTING_HELP["tcp_timeouts"][0],
        help=SETTING_HELP["tcp_timeouts"][1],
    )
    option("queue_policy", choices=QUEUE_POLICIES)
    option("on_stop", choices=STOP_POLICIES)
    option("control_group")
    option("conn_table_memory", type=int)
    option("workers", type=int)
    option("fast_path", choices=FAST_PATHS)
    option("ftp_ports")
    parser.add_argument(
        "--no-supervise",
        dest="supervise",
        action="store_false",
        default=None,
        help="run without the supervisor process (it starts a daemon that died again)",
    )
    parser.add_argument(
        "--remove-hooks",
        action="store_true",
        help="remove the hooks a daemon stopped with --on-stop keep left, and exit",
    )
    return parser


def ftp_port_list(text: str) -> tuple[int, ...]:
    """``ftp_ports`` as ports (ip_vs_ftp's module_param_array ports, at most
    IP_VS_APP_MAX_PORTS = 8), or ConfigError saying why not."""
    words = [w.strip() for w in text.split(",") if w.strip()]
    if len(words) > 8:
        raise ConfigError("ftp_ports: at most 8 ports (IP_VS_APP_MAX_PORTS)")
    ports: list[int] = []
    for word in words:
        if not word.isdigit() or not 0 < int(word) < 65536:
            raise ConfigError(f"ftp_ports: {word!r} is not a port")
        ports.append(int(word))
    return tuple(dict.fromkeys(ports))


def parse_settings(argv: list[str]) -> Settings:
    return parse_command(argv)[0]


def parse_command(argv: list[str]) -> tuple[Settings, bool]:
    """The settings, and whether ``--remove-hooks`` was asked instead of a daemon."""
    parser = _parser()
    args = parser.parse_args(argv)

    settings = Settings()
    config_path = args.config or DEFAULT_CONFIG
    if args.config is not None or config_path.exists():
        try:
            data: dict[str, Any] = tomllib.loads(config_path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"config {config_path}: {err}") from err
        _merge(settings, {k.replace("-", "_"): v for k, v in data.items()}, str(config_path))
    cli = {
        k: v for k, v in vars(args).items() if v is not None and k not in ("config", "remove_hooks")
    }
    timeouts = cli.pop("tcp_timeout")
    _merge(settings, cli, "command line")
    for item in timeouts:
        state, _, seconds = item.partition("=")
        settings.tcp_timeouts[state] = _int(seconds, f"--tcp-timeout {item}")
    for state, seconds in settings.tcp_timeouts.items():
        if state.upper() not in proto_tcp.STATE_NAMES or seconds <= 0:
            raise ConfigError(f"bad TCP timeout {state}={seconds}")
    settings.check()
    return settings, bool(args.remove_hooks)


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{what}: not a number") from None


def _merge(settings: Settings, values: dict[str, Any], origin: str) -> None:
    """Set ``values`` (from the TOML file or the command line) on ``settings``; a value
    of the wrong type is refused naming its key, as an unknown key is."""
    known = {f.name for f in fields(settings)}
    hints = get_type_hints(Settings)
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{origin}: unknown setting {key!r}")
        setattr(settings, key, _typed(hints[key], value, f"{origin}: {key}"))


# TOML values each kind of setting takes: (the types accepted, what to call them).
_SCALARS: dict[Any, tuple[tuple[type, ...], str]] = {
    Path: ((str, Path), "a path (a string)"),
    str: ((str,), "a string"),
    int: ((int,), "an integer"),
    bool: ((bool,), "true or false"),
}


def _typed(hint: Any, value: Any, where: str) -> Any:
    """``value`` as the setting whose annotation is ``hint`` holds it, or ConfigError
    saying which key is wrong and why."""
    if hint in _SCALARS:
        accepted, what = _SCALARS[hint]
        if not isinstance(value, accepted) or (hint is int and isinstance(value, bool)):
            raise ConfigError(f"{where} must be {what}, not {_toml_kind(value)}")
        return Path(str(value)) if hint is Path else value
    # dict[str, int] (tcp_timeouts) or dict[str, str] (sysctl): a table of scalars.
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table, not {_toml_kind(value)}")
    out: dict[str, Any] = {}
    for name, item in value.items():
        if hint == dict[str, int]:
            if not isinstance(item, int) or isinstance(item, bool):
                raise ConfigError(f"{where}.{name} must be an integer, not {_toml_kind(item)}")
            out[str(name).upper()] = item
        else:
            if not isinstance(item, str | int | bool):
                raise ConfigError(
                    f"{where}.{name} must be a number, a string or true/false, "
                    f"not {_toml_kind(item)}"
                )
            out[str(name)] = ("1" if item else "0") if isinstance(item, bool) else str(item).lower()
    return out


def _toml_kind(value: Any) -> str:
    kinds = {bool: "true/false", int: "an integer", float: "a float", str: "a string",
             list: "an array", dict: "a table"}  # fmt: skip
    for kind, name in kinds.items():
        if isinstance(value, kind):
            return f"{name} ({value!r})" if kind in (int, float, str) else name
    return type(value).__name__


def read_rules(path: Path) -> Config:
    """The rules file (ipvsadm-save lines); a bad one is refused whole, naming the line."""
    if not path.exists():
        return Config()
    try:
        return load_rules(path.read_text())
    except ConfigError as err:
        raise ConfigError(f"rules file {path}: {err}") from None


class Daemon:
    """The running director; the control plane's target (``ControlTarget``)."""

    def __init__(
        self, settings: Settings, *, hooks: Hooks | None = None, routes: Routes | None = None
    ) -> None:
        """``hooks`` and ``routes`` are the daemon's netfilter and netlink sides; by
        default the real ones (tests give in-memory ones: tests/target.py)."""
        self.settings = settings
        try:
            sysctls = Sysctls().updated(settings.sysctl)
        except ValueError as err:
            raise ConfigError(f"sysctl: {err}") from None
        limit = table_share(settings.conn_table_memory, settings.workers)
        ftp_ports = ftp_port_list(settings.ftp_ports)
        self.director = build_director(settings.tcp_timeouts, sysctls, limit, ftp_ports)
        # The other workers (--workers N: worker 0 is this process), the shards of
        # clients between them, the board their counters meet on and its slots.
        self.shards = Shards()
        self.peers: list[Peer] = []
        self.board: Board | None = None
        self.slots = Slots()
        self._slots: dict[SlotKey, int] = {}
        self._peer_dumps: list[dict[str, Any]] = []
        self._selector: selectors.BaseSelector | None = None  # the loop's, while it runs
        self.follower: fastpath.Follower | None = None  # conntrack's side (fast path)
        self.accounting: fastpath.Accounting | None = None  # its stats, for every worker
        self._runtime_sysctls = self._load_sysctls()
        self._config = Config()
        self._unreachable: dict[tuple[bytes, str], str] = {}  # (addr, method) -> reason
        self.hooks = (
            hooks
            if hooks is not None
            else Hooks(
                queue=settings.queue_num,
                mark=settings.send_mark,
                bypass=settings.queue_policy == "bypass",
                fast=settings.fast_path == "kernel",
                app_ports=frozenset(ftp_ports),
            )
        )
        self.routes = routes if routes is not None else Routes()
        self.notifier = Notifier()
        self.stop_requested = False
        self.rate_timer = estimator.RateTimer()
        # Exceptions the loop caught and went on after, by where they happened.
        self.loop_errors: Counter[str] = Counter()
        self._hooks_stale = False  # a health hand-off could not sync them: retry
        self.watch = status.Watch()  # when the status page was last asked for
        self.metrics = (
            MetricsServer(settings.metrics_listen, status.pages(self.watch))
            if settings.metrics_listen
            else None
        )
        # Health checks (director.health): the core runs health.effective(intent).
        self.health = HealthManager()
        # The connection sync daemons (director.shell.sync): worker 0 receives, every
        # worker sends its own shard's connections.
        self.sync = SyncDaemon(self.director, self._sync_deliver)
        self.sync.on_master = self._sync_master
        self.sync.on_backup = self._sync_backup
        self.sync.config = lambda: self._config
        if self.metrics is not None:
            self.metrics.registry.register(self.health.collector)
            self.metrics.registry.register(self.sync.collector)

    # -- ControlTarget -----------------------------------------------------------

    @property
    def config(self) -> Config:
        return self._config

    def commit(self, config: Config, *, persist: bool = True) -> None:
        """All or nothing: the hooks, then the rules file; if either fails the hooks
        are put back as they were and nothing else changed.  The core's tables,
        which cannot refuse a checked configuration, follow last."""
        # Everything that can refuse the change does so before anything is written.
        # A real server with no route is no reason to refuse (IPVS takes it): it is
        # shown unreachable until netlink announces a way to it.
        self.director.check(self.health.worst(config))
        mixed = sync_mixed_family(config) if self.sync.state else None
        if mixed is not None:
            raise ConfigError(f"{mixed}: a sync daemon runs")
        effective = self.health.effective(config)
        slots = self.slots.assign(effective)
        try:
            self.hooks.sync(effective, slots)
            if persist:
                atomic_write(self.settings.rules, format_save(config))
        except Exception:
            try:
                before = self.health.effective(self._config)
                self.hooks.sync(before, self.slots.assign(before))
            except Exception:
                self._hooks_stale = True  # the tick tries again
                log.exception("netfilter hooks not put back after a failed change")
            raise
        self._hooks_stale = False
        self._apply(effective, slots)
        self._config = config
        shards = Shards.for_config(self.settings.workers, config)
        if self.peers and shards != self.shards:
            self._step("reshard", partial(self._reshard, shards))
        self.health.reconfigure(config)
        # The change is made: a route lookup that fails now must not report it
        # failed (netlink's next change annotates again).
        self._step("routes", self._annotate_routes)

    def _on_health(self) -> None:
        """Check results came in: run the table health makes of the intent."""
        if self.health.on_readable():
            self._hooks_stale = True  # until synced, here or by a later tick
            effective = self.health.effective(self._config)
            self._apply(effective, self.slots.assign(effective))
            self._step("routes", self._annotate_routes)
            self._sync_hooks()

    def _apply(self, effective: Config, slots: dict[SlotKey, int]) -> None:
        """Every worker's tables follow ``effective`` (the table health makes)."""
        before = fastpath.marks(self.director)
        self.director.configure(effective)
        fastpath.annotate(self.director, slots, self.settings.fast_path == "kernel")
        if self.follower is not None:  # one process does it for the namespace
            self._step("conntrack", partial(self.follower.forget,
                                            before - fastpath.marks(self.director)))  # fmt: skip
        self._slots = slots
        if self.board is not None:
            self.board.bind(self.director, slots)
        self._each_peer("configure", effective, slots)

    def _reshard(self, shards: Shards) -> None:
        """Cut the shards anew (a persistence netmask came or went): every worker's
        entries whose clients change hands are copied to their new workers, the shard
        chains switch in one transaction, and the old copies go.  Packets meet a worker
        that knows their connection throughout (a state change in the few milliseconds
        between the copy and the switch is the one thing lost)."""
        self._follow_shards(None)  # every worker holds old and new clients' entries a while
        now = time.monotonic()
        moving = [conn_dump.dump(self.director, now, leaving(shards, 0))]
        moving += self._each_peer("emigrants", shards)
        entries = [entry for part in moving for entry in part["conns"]]
        parts = self._by_owner({"format": conn_dump.FORMAT, "conns": entries}, shards)
        conn_dump.load(self.director, parts[0], now)
        for peer in self.peers:
            peer.call("load", parts[peer.index])
        self.hooks.reshard(shards)
        conn_dump.drop(self.director, leaving(shards, 0))
        self._each_peer("prune", shards)
        self.shards = shards
        self._follow_shards(shards)
        log.info("clients sharded by the address bits %s now (persistence netmasks "
                 "changed): %d entries moved; IPv6 ones by %s", dotted(shards.mask), len(entries),
                 hex6(shards.mask6))  # fmt: skip

    def _follow_shards(self, shards: Shards | None) -> None:
        """Every worker's conntrack events for its clients under ``shards`` (fast path)."""
        if self.follower is not None:
            self.follower.follow(shards, 0)
            self._each_peer("follow", shards)

    def _each_peer(self, op: str, *args: Any) -> list[Any]:
        """One request to every other worker; a worker that fails it is started
        again (with the tables of now, and an empty connection table)."""
        try:
            return fan_out(self.peers, op, *args)
        except PeerError as err:
            log.error("%s; starting the workers that failed again", err)
        answers = []
        for peer in self.peers:
            try:
                answers.append(peer.call(op, *args))
            except PeerError:
                self._restart_peer(peer)
                answers.append(peer.call(op, *args))
        return answers

    def _sync_hooks(self) -> None:
        """Bring the hooks to what the core runs, if a hand-off left them behind."""
        if self._hooks_stale:
            effective = self.health.effective(self._config)
            self.hooks.sync(effective, self.slots.assign(effective))
            self._hooks_stale = False

    def checks(self) -> list[dict[str, Any]]:
        return self.health.report()

    def _annotate_routes(self) -> None:
        """Tell every real server the way to it (DR, TUN, local node), from netlink,
        and log the real servers that became unreachable or reachable again."""
        dests = [d for svc in self.director.services for d in svc.dests]
        self.routes.annotate(dests)
        self.director.local_addrs = self.routes.local_addresses()
        now = {(d.addr, d.method): unreachable(d) for d in dests}
        for (addr, method), reason in now.items():
            if reason != self._unreachable.get((addr, method)):
                if reason is None:
                    log.info("real server %s (%s) is reachable", unpack_addr(addr), method)
                else:
                    log.warning(
                        "real server %s (%s) is unreachable: %s; its packets are dropped "
                        "until a route appears",
                        unpack_addr(addr),
                        method,
                        reason,
                    )
        self._unreachable = {k: v for k, v in now.items() if v is not None}
        self._sync_tunneled()

    def _sync_tunneled(self) -> None:
        """The hooks leave alone what the host's tunnel devices decapsulated while
        ignore_tunneled is 1 (none at 0), read from netlink's links whenever one
        changes; netlink refusing keeps the devices as they were."""
        devices: frozenset[str] = frozenset()
        if self.director.sysctls.ignore_tunneled:
            links = self.routes.links()
            if links is None:
                return
            devices = tunneled_devices(links)
        self.hooks.tunneled(devices)

    def _on_netlink(self, neighbours: Neighbours) -> None:
        neighbours.on_readable()
        if neighbours.routes_changed:
            neighbours.routes_changed = False
            self._annotate_routes()

    def snapshot(self, *, conns: bool, offset: int = 0, limit: int = CONN_PAGE) -> Snapshot:
        """The tables of the whole director: with several workers, their counters
        published to the board first, and the connection entries of all of them, worker
        by worker."""
        entries = self._publish()
        t = self._config.timeouts
        snap = snapshot(
            self.director,
            (t.tcp, t.tcpfin, t.udp),
            time.monotonic(),
            conns=conns and not self.peers,
            offset=offset,
            limit=limit,
        )
        if self.peers:
            snap["conn_entries"] += sum(entries)
            if conns:
                snap["conns"], snap["conns_next"] = self._conn_page(offset, limit)
        self.health.annotate(snap)
        return snap

    def _publish(self) -> list[int]:
        """The other workers' counters on the board, and ours taken in; their
        connection entries, by worker."""
        if not self.peers:
            return []
        entries: list[int] = self._each_peer("publish")
        assert self.board is not None
        self.board.sync()
        return entries

    def _conn_page(self, offset: int, limit: int) -> tuple[list[Any], int | None]:
        """Entries ``offset`` to ``offset + limit`` of all workers' tables, worker 0's
        first (positions, as one table's pages are), and where the next page starts."""
        page: list[Any] = []
        skip = offset
        total = 0
        table = self.director.conns
        own = len(table.in_tab) + len(table.templates)
        if skip < own:
            page = conn_page(self.director, time.monotonic(), skip, limit)
        skip = max(skip - own, 0)
        total += own
        for peer in self.peers:
            part, held = peer.call("conns", skip, limit - len(page))
            page += part
            skip = max(skip - held, 0)
            total += held
        more = offset + len(page) < total and len(page) == limit
        return page, offset + len(page) if more else None

    def which(
        self, protocol: str, client: tuple[str, int], virtual: tuple[str, int], mark: int
    ) -> dict[str, Any] | None:
        owner = self.shards.owner(pack_addr(client[0]))
        if owner:
            key = self.peers[owner - 1].call("which", protocol, client, virtual, mark)
            if key is None:
                return None
            svc = self.director.services.lookup(
                PROTO_NUMBERS[protocol], pack_addr(virtual[0]), virtual[1], mark
            )
            found = None if svc is None else svc.find_dest(*key)
            return None if found is None else dict(dest_dict(found))
        dest = self.director.which(
            PROTO_NUMBERS[protocol],
            pack_addr(client[0]),
            client[1],
            pack_addr(virtual[0]),
            virtual[1],
            time.monotonic(),
            mark,
        )
        return None if dest is None else dict(dest_dict(dest))

    def sysctls(self, changes: dict[str, str]) -> dict[str, int | bool]:
        """Change IPVS's sysctls: all or none, and kept in SYSCTL_FILE for the next
        start (written before the change takes effect, so a failed write changes
        nothing)."""
        updated = self.director.sysctls.updated(changes)
        if changes:
            typed = updated.as_dict()
            kept = dict(self._runtime_sysctls)
            kept.update({name: str(int(typed[name])) for name in changes})
            atomic_write(self.settings.state_dir / SYSCTL_FILE, json.dumps(kept, indent=1))
            self._runtime_sysctls = kept
        self.director.sysctls = updated
        self._each_peer("sysctls", updated)
        if "ignore_tunneled" in changes:
            self._step("tunneled", self._sync_tunneled)
        return updated.as_dict()

    def _load_sysctls(self) -> dict[str, str]:
        """The sysctls `dirctl sysctl` set in an earlier run, applied over the
        settings' own; a file that cannot be used is reported and left alone."""
        path = self.settings.state_dir / SYSCTL_FILE
        try:
            kept = json.loads(path.read_text())
            if not isinstance(kept, dict):
                raise ValueError("not an object")
            kept = {str(k): str(v) for k, v in kept.items()}
            self.director.sysctls = self.director.sysctls.updated(kept)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            log.error("sysctls of an earlier run (%s) not applied: %s", path, err)
            return {}
        if kept:
            changes = ", ".join(f"{k}={v}" for k, v in kept.items())
            log.info("sysctls set by dirctl in an earlier run: %s", changes)
        return kept

    def zero(self, key: tuple[str, str, int] | None) -> None:
        estimator.zero(self.director, key)

    def sync_daemon(self, command: str, args: dict[str, Any]) -> Any:
        """ipvsadm --start-daemon, --stop-daemon and -L --daemon.  A started or stopped
        daemon is kept in SYNC_FILE for the next start (undone if that write fails)."""
        if command == "list":
            return self._sync_listing()
        if command == "start":
            conf = parse_daemon(args)
            try:
                self.sync.start(conf)
            except OSError as err:  # ENODEV and the like: the caller's to fix
                raise ConfigError(f"{conf.mcast_ifn}: {err.strerror or err}") from None
            try:
                self._save_sync()
            except OSError:
                self.sync.stop(conf.state)
                raise
            return None
        state = args.get("state")
        if state not in SYNC_STATES:
            raise ConfigError(f"daemon state must be master or backup, not {state!r}")
        before = [c for c in self.sync.confs() if c.state == state]
        self.sync.stop(state)
        try:
            self._save_sync()
        except OSError:
            self.sync.start(before[0])
            raise
        return None

    def _sync_listing(self) -> list[dict[str, Any]]:
        rows = []
        for side in (self.sync.sender, self.sync.receiver):
            if side is not None:
                row = side.conf.as_dict()
                row["sync_maxlen"] = side.maxlen
                rows.append(row)
        return rows

    def _save_sync(self) -> None:
        confs = [conf.as_dict() for conf in self.sync.confs()]
        atomic_write(self.settings.state_dir / SYNC_FILE, json.dumps(confs, indent=1))

    def _restore_sync(self) -> None:
        """The sync daemons of the previous run, started again; one that cannot start
        (its interface is gone...) is reported and left out (the file keeps it)."""
        path = self.settings.state_dir / SYNC_FILE
        try:
            confs = json.loads(path.read_text())
            if not isinstance(confs, list):
                raise ValueError("not a list")
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            log.error("sync daemons of an earlier run (%s) not started: %s", path, err)
            return
        for item in confs:
            try:
                self.sync.start(parse_daemon(item if isinstance(item, dict) else {}))
            except (ConfigError, OSError) as err:
                log.error("sync daemon %r of an earlier run not started: %s", item, err)

    def _sync_master(self, conf: DaemonConf | None) -> None:
        """The other workers send their own connections too (or stop)."""
        self._each_peer("sync_master", conf)

    def _sync_backup(self, running: bool) -> None:
        """The other workers know the backup runs (backup_only holds them back too)."""
        self._each_peer("sync_backup", running)

    def _sync_deliver(self, conns: list[Any], now: float) -> Counter[str]:
        """Received entries to the workers that own their clients, IPv4 and IPv6 alike
        (Shards.owner, by the shard bits of the client's family)."""
        if not self.peers:
            return sync_apply(self.director, conns, now)
        outcomes: Counter[str] = Counter()
        parts: list[list[Any]] = [[] for _ in range(self.settings.workers)]
        for conn in conns:
            parts[self.shards.owner(conn.caddr)].append(conn)
        outcomes.update(sync_apply(self.director, parts[0], now))
        for peer in self.peers:
            if parts[peer.index]:
                outcomes.update(peer.call("sync_apply", parts[peer.index], now))
        return outcomes

    # -- life cycle ----------------------------------------------------------------

    def run(self) -> int:
        config = read_rules(self.settings.rules)
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        # The shards are cut inside the persistence netmasks the rules file has now.
        self.shards = Shards.for_config(self.settings.workers, config)
        self.hooks.shards = self.shards
        self.hooks.timeouts = config.timeouts  # the fast path's from the start
        self.hooks.install()
        neighbours = Neighbours()
        queue, mark = self.settings.queue_num, self.settings.send_mark
        workers = [
            Worker(self.director, queue, mark, neighbours),
            Worker(self.director, reply_queue(queue), mark, neighbours, gso=True),
        ]
        try:
            self._start_peers()
            if self.settings.fast_path == "kernel":
                self.follower = fastpath.follow(self.director, self.shards, 0)
                self.accounting = fastpath.Accounting(self.director)
            self.health.start()
            self.commit(config, persist=False)
            self._load_conns()
            self._restore_sync()
            for worker in workers:
                worker.bind()
            self._each_peer("bind")
            if self.metrics is not None:
                self.metrics.publish(self._sample(workers))
                self.metrics.start()
            group = self.settings.control_group
            control = ControlServer(
                self.settings.control_socket, self, grp.getgrnam(group).gr_gid if group else None
            )
        except Exception:
            self._stop_peers()
            self.health.stop()
            if self.metrics is not None:
                self.metrics.close()
            self.hooks.remove()
            raise
        try:
            self._loop(workers, control)
        finally:
            saved = self._shut_down(workers, control)
        return EXIT_OK if saved else EXIT_STOP_FAILED

    def _start_peers(self) -> None:
        """Workers 1 to N-1, each in its own process, and the board they share."""
        count = self.settings.workers
        if count == 1:
            return
        fd = board.create(count)
        self.board = Board(fd, count, 0)
        settings = self.settings
        init = {
            "workers": count,
            "queue_num": settings.queue_num,
            "send_mark": settings.send_mark,
            "tcp_timeouts": settings.tcp_timeouts,
            "sysctls": self.director.sysctls,
            "conn_table_memory": settings.conn_table_memory,
            "fast": settings.fast_path == "kernel",
            "shards": self.shards,
            "ftp_ports": ftp_port_list(settings.ftp_ports),
        }
        self.peers = [Peer(index, fd, init) for index in range(1, count)]
        log.info("%d workers, clients sharded by the address bits %s", count,
                 _shard_bits(self.shards))  # fmt: skip

    def _restart_peer(self, peer: Peer) -> None:
        """A worker died or stopped answering: a new process in its place, with the
        tables of now (the connections it held are lost, as a crash loses them)."""
        log.error("worker %d failed; starting it again", peer.index)
        self.loop_errors["worker_restart"] += 1
        if self._selector is not None:
            self._selector.unregister(peer)
        peer.process.kill()
        peer.close()
        peer.init["sysctls"] = self.director.sysctls
        peer.init["shards"] = self.shards
        peer.start()
        if self._selector is not None:
            self._watch(self._selector, peer)
        peer.call("configure", self.health.effective(self._config), self._slots)
        if self.sync.sender is not None:
            peer.call("sync_master", self.sync.sender.conf)
        if self.sync.receiver is not None:
            peer.call("sync_backup", True)
        peer.call("bind")

    def _watch(self, selector: selectors.BaseSelector, peer: Peer) -> None:
        selector.register(peer, selectors.EVENT_READ, ("peer", partial(self._on_peer, peer)))

    def _on_peer(self, peer: Peer) -> None:
        """A worker's socket is readable outside a request: it is gone (or a late
        answer to a request that timed out came)."""
        try:
            while peer.conn.poll(0):
                peer.conn.recv()
        except (EOFError, OSError):
            self._restart_peer(peer)

    def _stop_peers(self) -> None:
        """Stop the other workers, keeping their connection tables for the dump."""
        for peer in self.peers:
            try:
                self._peer_dumps.append(peer.call("stop"))
            except PeerError as err:
                log.error("%s: its connections are not saved", err)
            peer.close()
        self.peers = []

    def _shut_down(self, workers: list[Worker], control: ControlServer) -> bool:
        """Stop serving, save the connection table and, on SIGTERM, take the hooks out
        (or leave them for the next start with on_stop = keep).  Each step runs
        whatever the others did; a table that could not be saved is no reason to
        keep the hooks holding traffic for a start that cannot restore it.  Returns
        whether the table was saved."""
        if self.stop_requested:
            self._step("stop", self.notifier.stopping)
        for worker in workers:  # no verdicts from here on: the queues hold or bypass
            self._step("stop", worker.close)
        self._step("stop", self.sync.close)  # sync.json keeps them for the next start
        self._step("stop", self._stop_peers)
        self._step("stop", self.health.stop)
        saved = self._step("save", self._save_conns)
        # After a crash the hooks stay, holding traffic for the supervisor's restart.
        keep = self.settings.on_stop == "keep" and saved
        if self.stop_requested and not keep:
            if not saved and self.settings.on_stop == "keep":
                log.error("connection table not saved: removing the hooks (on_stop = keep)")
            self._step("stop", self.hooks.remove)
        self._step("stop", control.close)
        if self.metrics is not None:
            self._step("stop", self.metrics.close)
        for neighbours in {id(w.neighbours): w.neighbours for w in workers}.values():
            self._step("stop", neighbours.close)
        self._step("stop", self.routes.close)
        if self.follower is not None:
            self._step("stop", self.follower.close)
        log.info("stopped")
        return saved

    def _step(self, where: str, action: Callable[[], object]) -> bool:
        """Run one piece of the loop's (or the stop's) work; an exception in it is
        logged and counted, and the caller goes on.  Returns whether it succeeded."""
        return guarded(self.loop_errors, where, action)

    def _sample(self, workers: list[Worker]) -> Any:
        kernel = read_queue_table()
        queues = tuple((w.queue, queue_sample(w, kernel)) for w in workers)
        reports = self._each_peer("report")
        if self.board is not None:
            self.board.sync()
        fast = None if self.follower is None else self.follower.report()
        sample = take_sample(self.director, workers[0].errors, self.loop_errors, queues, fast)
        if self.watch.watched(time.monotonic()):
            rows = status.rows(self.director, self._config, self.health, self.sync)
            sample = replace(sample, status=rows)
        peer_sync: Counter[str] = Counter()
        for report in reports:
            peer_sync.update(report.get("sync", {}))
        self.sync.peer_counts = dict(peer_sync)
        return add_reports(sample, reports)

    def _loop(self, workers: list[Worker], control: ControlServer) -> None:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno())
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        selector = self._selector = selectors.DefaultSelector()
        neighbours = workers[0].neighbours
        # Every callback is (where, action): `where` names it in the error count.
        for worker in workers:
            selector.register(worker, selectors.EVENT_READ, ("packets", worker.run_once))
        control.register(selector)
        if self.follower is not None:
            follower = self.follower
            selector.register(follower, selectors.EVENT_READ, ("conntrack", follower.on_readable))
        for peer in self.peers:
            self._watch(selector, peer)
        selector.register(
            neighbours, selectors.EVENT_READ, ("netlink", lambda: self._on_netlink(neighbours))
        )
        selector.register(wake_r, selectors.EVENT_READ, ("signal", lambda: _drain(wake_r)))
        selector.register(self.health, selectors.EVENT_READ, ("health", self._on_health))
        self.sync.attach(selector)

        self.notifier.ready(f"{len(self.director.services)} virtual services")
        log.info(
            "ready: %d virtual services, NFQUEUE %d (replies %d), %d worker%s, control socket %s",
            len(self.director.services),
            workers[0].queue,
            workers[1].queue,
            self.settings.workers,
            "" if self.settings.workers == 1 else "s",
            self.settings.control_socket,
        )
        pacer = None if self.board is None else CountPacer(self.board)
        next_tick = time.monotonic()
        while not self.stop_requested:
            now = time.monotonic()
            # While the collector has entries due, one slice per turn and no waiting:
            # the packets that came meanwhile are served between two slices.
            timeout = 0.0 if self.director.conns.behind(now) else max(0.0, next_tick - now)
            wakeup = self.sync.next_wakeup()
            if wakeup is not None:
                timeout = min(timeout, max(0.0, wakeup - now))
            if pacer is not None:
                timeout = pacer.timeout(now, timeout)
            events = selector.select(timeout)
            if pacer is not None and events:  # the other workers' counts, for scheduling
                self._step("board", partial(pacer.before, time.monotonic()))
            for key, _ in events:
                where, action = key.data
                self._step(where, action)
            now = time.monotonic()
            self._step("sync", partial(self.sync.flush, now))
            if pacer is not None:  # ours, soon, for theirs
                self._step("board", partial(pacer.after, now, bool(events)))
            if now >= next_tick or self.director.conns.behind(now):
                self._step("expire", partial(self.director.expire, now, COLLECT_SLICE))
            if now >= next_tick:
                self._tick(workers, control, now)
                next_tick = now + TICK
        signal.set_wakeup_fd(-1)
        self.sync.attach(None)
        self._selector = None
        selector.close()
        wake_r.close()
        wake_w.close()

    def _tick(self, workers: list[Worker], control: ControlServer, now: float) -> None:
        """The one-second timers, each on its own: one failing stops none of the rest
        (the watchdog least of all)."""
        neighbours = workers[0].neighbours

        def forget_unresolved() -> None:
            for nexthop in neighbours.expire(now):
                self.director.forget(nexthop)

        steps: tuple[tuple[str, Callable[[], object]], ...] = (
            ("defend", lambda: self.director.defend(self._available_pages(), now)),
            ("neighbours", forget_unresolved),
            ("board", self._sync_stats),
            ("estimate", lambda: estimator.estimate(self.director, self.rate_timer, now)),
            ("control", control.expire),
            ("hooks", self._sync_hooks),
            ("garbage", settle_garbage),
            ("conntrack", partial(self._follow, now)),
            ("sync", self.sync.tick),
        )
        for where, action in steps:
            self._step(where, action)
        if self.metrics is not None:
            metrics = self.metrics
            self._step("metrics", lambda: metrics.publish(self._sample(workers)))
        self._step("watchdog", self.notifier.watchdog)

    def _sync_stats(self) -> None:
        """The whole director's stats in ours (the board), for the estimator."""
        if self.board is not None:
            self.board.sync_stats()

    def _follow(self, now: float) -> None:
        if self.follower is not None:
            self.follower.tick(now)
        if self.accounting is not None:
            self.accounting.tick(now)

    def _available_pages(self) -> int:
        """4 KiB pages left for this worker's table (its share of the cap)."""
        cap = (self.settings.conn_table_memory << 20) // self.settings.workers
        return available_pages(cap, self.director.conns.memory())

    def _save_conns(self) -> None:
        """Write the connection table for the next start (atomically)."""
        path = self.settings.state_dir / CONNS_FILE
        data = conn_dump.dump(self.director, time.monotonic())
        for part in self._peer_dumps:  # the other workers', taken as they stopped
            data["conns"] += part["conns"]
        atomic_write(path, json.dumps(data, separators=(",", ":")))
        log.info("saved %d connection entries to %s", len(data["conns"]), path)

    def _load_conns(self) -> None:
        """Restore the connections a previous run saved, once; a bad file is set aside."""
        path = self.settings.state_dir / CONNS_FILE
        if not path.exists():
            return
        gc.disable()  # no full collections while a million entries are made
        try:
            data = json.loads(path.read_text())
            parts = self._by_owner(data, self.shards)
            restored, skipped = conn_dump.load(self.director, parts[0], time.monotonic())
            for peer in self.peers:
                more, less = peer.call("load", parts[peer.index])
                restored, skipped = restored + more, skipped + less
            log.info("restored %d connection entries (%d for services gone)", restored, skipped)
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.error("connection table %s not restored: %s", path, err)
        finally:
            gc.enable()
            settle_garbage()
            path.unlink(missing_ok=True)

    def _by_owner(self, data: dict[str, Any], shards: Shards) -> list[dict[str, Any]]:
        """A dump split by the worker that owns each entry's client (in order, so each
        part has its templates before the connections they control)."""
        if not isinstance(data, dict) or not isinstance(data.get("conns"), list):
            raise ValueError("not a connection dump")
        parts: list[dict[str, Any]] = [
            {"format": data.get("format"), "conns": []} for _ in range(self.settings.workers)
        ]
        for entry in data["conns"]:
            owner = shards.owner(pack_addr(entry["caddr"]))
            parts[owner]["conns"].append(entry)
        return parts

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop_requested = True


def _drain(sock: socket.socket) -> None:
    with contextlib.suppress(BlockingIOError):
        while sock.recv(4096):
            pass


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("DIRECTOR_LOG_LEVEL", "INFO"),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings, removing = parse_command(sys.argv[1:] if argv is None else argv)
    except ConfigError as err:
        log.error("%s", err)
        return EXIT_USAGE
    if removing:
        return remove_hooks(settings)
    if not settings.supervise:
        return serve(settings)
    return supervise(lambda: serve(settings))


def remove_hooks(settings: Settings) -> int:
    """``directord --remove-hooks``: take out the hooks (jumps, chains, ipsets) that a
    daemon stopped with ``--on-stop keep`` left holding the services' traffic; the last
    step of ``systemctl stop`` (systemd/director-hooks.service).  Refused while a daemon
    answers on the control socket: its services would stop under it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(settings.control_socket))
        except OSError:
            pass
        else:
            log.error("a directord answers on %s: stop it first", settings.control_socket)
            return EXIT_SETUP
    try:
        Hooks(queue=settings.queue_num, mark=settings.send_mark).remove()
    except OSError as err:
        log.error("cannot remove the hooks: %s", err)
        return EXIT_SETUP
    log.info("netfilter hooks removed")
    return EXIT_OK


def serve(settings: Settings) -> int:
    """One daemon's life; its exit status tells the supervisor what happened."""
    try:
        return Daemon(settings).run()
    except ConfigError as err:
        log.error("%s", err)
        return EXIT_USAGE
    except OSError as err:
        log.error("cannot start: %s", err)
        return EXIT_SETUP
    except Exception:
        log.exception("daemon failed")
        return EXIT_CRASH


if __name__ == "__main__":
    sys.exit(main())
