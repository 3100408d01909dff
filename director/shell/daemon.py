"""``directord``: the daemon that ties the core to the kernel.

At start it installs the netfilter hooks, binds the NFQUEUE worker, loads the rules
file and opens the control socket; then one loop serves packets, control requests and
a one-second tick (defences, rates, metrics, systemd watchdog); the connection
collector runs in slices between packets.  Signal handlers only set a flag; the loop
acts on it.  On SIGTERM it saves the connection table, removes the hooks (or, with
``--on-stop keep``, leaves them holding traffic for the next start, as the shipped
systemd unit does) and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from director.core import conn_dump, estimator, proto_tcp
from director.core.conn import COLLECT_SLICE, CONN_BYTES, PAGE
from director.core.engine import Director
from director.core.service import PROTO_NUMBERS, pack_addr, unpack_addr
from director.core.sysctl import Sysctls
from director.core.xmit import unreachable
from director.ctl.ipvsadm import format_save, load_rules
from director.ctl.report import dest_dict, snapshot
from director.ctl.snapshot import Snapshot
from director.health.manager import HealthManager
from director.model.config import Config, ConfigError
from director.shell.control import ControlServer
from director.shell.metrics import MetricsServer, take_sample
from director.shell.netfilter import Hooks
from director.shell.netlink import Neighbours, Routes
from director.shell.notify import Notifier
from director.shell.persist import atomic_write
from director.shell.supervise import EXIT_CRASH, supervise
from director.shell.worker import Worker

log = logging.getLogger("directord")

EXIT_OK = 0
EXIT_SETUP = 1  # could not install hooks, bind the queue or open the socket
EXIT_USAGE = 2  # bad option, bad config file or bad rules file

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

    def check(self) -> None:
        try:
            Sysctls().updated(self.sysctl)
        except ValueError as err:
            raise ConfigError(f"sysctl: {err}") from None
        if self.conn_table_memory < 1:
            raise ConfigError("conn_table_memory must be at least 1 MiB")
        for name, allowed in (("queue_policy", QUEUE_POLICIES), ("on_stop", STOP_POLICIES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}")
        if self.control_group:
            try:
                grp.getgrnam(self.control_group)
            except KeyError:
                raise ConfigError(f"control_group: no group {self.control_group!r}") from None


QUEUE_POLICIES = ("hold", "bypass")
STOP_POLICIES = ("remove", "keep")
CONNS_FILE = "conns.json"
DEFAULT_CONFIG = Path("/etc/director/director.toml")


# What each setting does, for --help; the TOML file takes the same names as keys.
# Every field of Settings has one (tests/shell/test_settings.py checks it).
SETTING_HELP: dict[str, tuple[str, str]] = {  # field: (metavar, help)
    "control_socket": ("PATH", "the Unix socket dirctl talks to"),
    "rules": ("PATH", "the rules file (ipvsadm-save lines), read at start, rewritten on "
              "every change"),
    "state_dir": ("DIR", "where the connection table is saved at stop and read at start"),
    "metrics_listen": ("HOST:PORT", "serve Prometheus /metrics there (off when empty)"),
    "queue_num": ("N", "the NFQUEUE number of the hooks"),
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
    known = {f.name: f for f in fields(settings)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{origin}: unknown setting {key!r}")
        default = getattr(settings, key)
        if isinstance(default, Path):
            value = Path(value)
        elif key == "tcp_timeouts":
            value = {str(k).upper(): int(v) for k, v in dict(value).items()}
        elif isinstance(default, dict):
            value = {str(k): str(v).lower() for k, v in dict(value).items()}
        setattr(settings, key, value)


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
        self.director = Director()
        self.director.conn_limit = (settings.conn_table_memory << 20) // CONN_BYTES
        for state, seconds in settings.tcp_timeouts.items():
            self.director.tcp.timeouts[proto_tcp.STATE_NAMES.index(state.upper())] = seconds
        try:
            self.sysctls(settings.sysctl)
        except ValueError as err:
            raise ConfigError(f"sysctl: {err}") from None
        self._config = Config()
        self._unreachable: dict[tuple[bytes, str], str] = {}  # (addr, method) -> reason
        self.hooks = (
            hooks
            if hooks is not None
            else Hooks(
                queue=settings.queue_num,
                mark=settings.send_mark,
                bypass=settings.queue_policy == "bypass",
            )
        )
        self.routes = routes if routes is not None else Routes()
        self.notifier = Notifier()
        self.stop_requested = False
        self.rate_timer = estimator.RateTimer()
        self.metrics = MetricsServer(settings.metrics_listen) if settings.metrics_listen else None
        # Health checks (director.health): the core runs health.effective(intent).
        self.health = HealthManager()
        if self.metrics is not None:
            self.metrics.registry.register(self.health.collector)

    # -- ControlTarget -----------------------------------------------------------

    @property
    def config(self) -> Config:
        return self._config

    def commit(self, config: Config, *, persist: bool = True) -> None:
        # Everything that can refuse the change does so before anything is written.
        # A real server with no route is no reason to refuse (IPVS takes it): it is
        # shown unreachable until netlink announces a way to it.
        self.director.check(self.health.worst(config))
        if persist:
            atomic_write(self.settings.rules, format_save(config))
        self.director.configure(self.health.effective(config))
        self._annotate_routes()
        self.hooks.sync(self.director.services)
        self._config = config
        self.health.reconfigure(config)

    def _on_health(self) -> None:
        """Check results came in: run the table health makes of the intent."""
        if self.health.on_readable():
            self.director.configure(self.health.effective(self._config))
            self._annotate_routes()
            self.hooks.sync(self.director.services)

    def checks(self) -> list[dict[str, Any]]:
        return self.health.report()

    def _annotate_routes(self) -> None:
        """Tell every real server the way to it (DR, TUN, local node), from netlink,
        and log the real servers that became unreachable or reachable again."""
        dests = [d for svc in self.director.services for d in svc.dests]
        self.routes.annotate(dests)
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

    def _on_netlink(self, neighbours: Neighbours) -> None:
        neighbours.on_readable()
        if neighbours.routes_changed:
            neighbours.routes_changed = False
            self._annotate_routes()

    def snapshot(self, *, conns: bool) -> Snapshot:
        t = self._config.timeouts
        snap = snapshot(self.director, (t.tcp, t.tcpfin, t.udp), time.monotonic(), conns=conns)
        self.health.annotate(snap)
        return snap

    def which(
        self, protocol: str, client: tuple[str, int], virtual: tuple[str, int], mark: int
    ) -> dict[str, Any] | None:
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
        self.director.sysctls = self.director.sysctls.updated(changes)
        return self.director.sysctls.as_dict()

    def zero(self, key: tuple[str, str, int] | None) -> None:
        estimator.zero(self.director, key)

    # -- life cycle ----------------------------------------------------------------

    def run(self) -> int:
        config = read_rules(self.settings.rules)
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.hooks.install()
        worker = Worker(
            self.director, self.settings.queue_num, self.settings.send_mark, Neighbours()
        )
        try:
            self.health.start()
            self.commit(config, persist=False)
            self._load_conns()
            worker.bind()
            if self.metrics is not None:
                self.metrics.publish(take_sample(self.director, worker.errors))
                self.metrics.start()
            group = self.settings.control_group
            control = ControlServer(
                self.settings.control_socket, self, grp.getgrnam(group).gr_gid if group else None
            )
        except Exception:
            self.health.stop()
            if self.metrics is not None:
                self.metrics.close()
            self.hooks.remove()
            raise
        try:
            self._loop(worker, control)
        finally:
            if self.stop_requested:
                self.notifier.stopping()
            worker.close()  # no verdicts from here on: the queue holds or bypasses
            self.health.stop()
            self._save_conns()
            # After a crash the hooks stay, holding traffic for the supervisor's restart.
            if self.stop_requested and self.settings.on_stop == "remove":
                self.hooks.remove()
            control.close()
            if self.metrics is not None:
                self.metrics.close()
            worker.neighbours.close()
            self.routes.close()
            log.info("stopped")
        return EXIT_OK

    def _loop(self, worker: Worker, control: ControlServer) -> None:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno())
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        selector = selectors.DefaultSelector()
        selector.register(worker, selectors.EVENT_READ, worker.run_once)
        selector.register(control, selectors.EVENT_READ, control.serve_one)
        neighbours = worker.neighbours
        selector.register(neighbours, selectors.EVENT_READ, lambda: self._on_netlink(neighbours))
        selector.register(wake_r, selectors.EVENT_READ, lambda: _drain(wake_r))
        selector.register(self.health, selectors.EVENT_READ, self._on_health)

        self.notifier.ready(f"{len(self.director.services)} virtual services")
        log.info(
            "ready: %d virtual services, NFQUEUE %d, control socket %s",
            len(self.director.services),
            self.settings.queue_num,
            self.settings.control_socket,
        )
        next_tick = time.monotonic()
        while not self.stop_requested:
            now = time.monotonic()
            # While the collector has entries due, one slice per turn and no waiting:
            # the packets that came meanwhile are served between two slices.
            timeout = 0.0 if self.director.conns.behind(now) else max(0.0, next_tick - now)
            for key, _ in selector.select(timeout):
                key.data()
            now = time.monotonic()
            tick = now >= next_tick
            if tick or self.director.conns.behind(now):
                self.director.expire(now, COLLECT_SLICE)
            if tick:
                self.director.defend(self._available_pages(), now)
                for nexthop in neighbours.expire(now):
                    self.director.forget(nexthop)
                estimator.estimate(self.director, self.rate_timer, now)
                if self.metrics is not None:
                    self.metrics.publish(take_sample(self.director, worker.errors))
                self.notifier.watchdog()
                next_tick = now + TICK
        signal.set_wakeup_fd(-1)
        selector.close()
        wake_r.close()
        wake_w.close()

    def _available_pages(self) -> int:
        """4 KiB pages left: the host's MemAvailable or the table's own cap, the lesser."""
        cap = self.settings.conn_table_memory << 20
        left = max(cap - self.director.conns.memory(), 0) // PAGE
        try:
            with open("/proc/meminfo") as meminfo:
                for line in meminfo:
                    if line.startswith("MemAvailable:"):
                        return min(left, int(line.split()[1]) * 1024 // PAGE)
        except OSError:
            pass
        return left

    def _save_conns(self) -> None:
        """Write the connection table for the next start (atomically)."""
        path = self.settings.state_dir / CONNS_FILE
        data = conn_dump.dump(self.director, time.monotonic())
        atomic_write(path, json.dumps(data, separators=(",", ":")))
        log.info("saved %d connection entries to %s", len(data["conns"]), path)

    def _load_conns(self) -> None:
        """Restore the connections a previous run saved, once; a bad file is set aside."""
        path = self.settings.state_dir / CONNS_FILE
        if not path.exists():
            return
        try:
            restored, skipped = conn_dump.load(
                self.director, json.loads(path.read_text()), time.monotonic()
            )
            log.info("restored %d connection entries (%d for services gone)", restored, skipped)
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.error("connection table %s not restored: %s", path, err)
        finally:
            path.unlink(missing_ok=True)

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
