"""The sync daemons' sockets (ip_vs_sync.c's make_send_sock, make_receive_sock and
threads), around the pure protocol of director.core.sync.

``Sender`` is a master's: a UDP socket bound to the multicast interface's address,
its multicast interface, TTL and no loopback set as the kernel sets them, connected
to the group and port; the loop calls ``flush`` and sends what the Master's timers
let go.  Every worker process sends its own shard's connections on a sender of its
own (the kernel has one sending thread per sync port in the same way).

``Receiver`` is a backup's, in worker 0: bound to the group and port on the
interface (SO_BINDTODEVICE, as sk_bound_dev_if), a member of the group there; each
datagram is decoded (director.core.sync.decode) and its entries handed to
``deliver`` (the daemon gives each worker the entries of its clients).  A datagram
from one of this namespace's own addresses is never taken.

``SyncDaemon`` is the pair, started and stopped by ``dirctl start-daemon`` and
``stop-daemon`` and listed as ``ipvsadm -L --daemon`` lists them; its counters are a
Prometheus collector of their own (director_sync_*), registered next to the others.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import selectors
import socket
import struct
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from director.core import sync
from director.core.engine import Director
from director.core.sync import SyncConn
from director.model.config import Config, ConfigError
from director.model.sync import DaemonConf

log = logging.getLogger(__name__)

SIOCGIFADDR = 0x8915
SIOCGIFMTU = 0x8921
IP_MTU_DISCOVER = 10  # linux/in.h (the socket module has it only on some builds)
IP_PMTUDISC_DONT = 0
RECV_BATCH = 64  # datagrams read per readable event, then the loop goes on


def _ifreq(ifn: str, request: int) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        return fcntl.ioctl(probe.fileno(), request, struct.pack("256s", ifn.encode()))


def interface(ifn: str) -> tuple[int, bytes, int]:
    """The interface's index, first IPv4 address (0.0.0.0 if it has none, as
    inet_select_addr leaves it) and MTU; OSError ENODEV if there is no such device."""
    try:
        index = socket.if_nametoindex(ifn)
    except OSError:
        raise OSError(errno.ENODEV, "No such device") from None
    try:
        addr = _ifreq(ifn, SIOCGIFADDR)[20:24]
    except OSError:
        addr = bytes(4)
    mtu = struct.unpack_from("i", _ifreq(ifn, SIOCGIFMTU), 16)[0]
    return index, addr, mtu


def maxlen(conf: DaemonConf, mtu: int) -> int:
    """start_sync_thread's sync_maxlen: the given one clamped (at least 1 for a master,
    1024 for a backup), or the MTU's (1500 for a master, the interface's, at least 1500,
    for a backup) less the IP and UDP headers."""
    backup = conf.state == "backup"
    if conf.sync_maxlen:
        low = sync.BACKUP_MIN_MAXLEN if backup else 1
        return min(max(conf.sync_maxlen, low), sync.MAXLEN_MAX)
    link = min(max(mtu, 1500), 65535) if backup else sync.MASTER_MTU
    return link - sync.UDP_IP_HLEN


def _mreqn(group: bytes, index: int) -> bytes:
    return struct.pack("=4s4si", group, bytes(4), index)  # struct ip_mreqn


class Sender:
    """A master's socket and its Master (make_send_sock, sync_thread_master)."""

    def __init__(self, conf: DaemonConf, director: Director, sock_size: int = 0) -> None:
        index, addr, mtu = interface(conf.mcast_ifn)
        self.conf = conf
        self.maxlen = maxlen(conf, mtu)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s = self.sock
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, _mreqn(bytes(4), index))
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, conf.mcast_ttl)
            s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
            if sock_size:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sock_size)
            s.bind((socket.inet_ntoa(addr), 0))
            s.connect((conf.mcast_group, conf.mcast_port))
            s.setblocking(False)
        except OSError:
            self.sock.close()
            raise
        self.master = sync.Master(conf.syncid, self.maxlen, director.sysctls)
        self.pending: deque[bytes] = deque()  # taken but not yet through the socket
        self.counts: Counter[str] = Counter()

    def flush(self, now: float) -> None:
        """Send what the master's timers let go; a full socket buffer keeps the rest
        for the next turn (the kernel's thread waits for the socket to be writable)."""
        self.pending.extend(self.master.take(now))
        while self.pending:
            data = self.pending[0]
            try:
                self.sock.send(data)
            except BlockingIOError:
                return
            except OSError as err:
                self.counts[f"send_{errno.errorcode.get(err.errno or 0, 'error').lower()}"] += 1
            else:
                self.counts["messages_sent"] += 1
                self.counts["entries_sent"] += _count(data)
            self.pending.popleft()

    def next_wakeup(self) -> float | None:
        if self.pending:
            return 0.0
        return self.master.next_wakeup()

    def report(self) -> dict[str, int]:
        counts = dict(self.counts)
        counts["entries_queued"] = self.master.entries
        counts["qlen_max"] = self.master.dropped
        return counts

    def close(self) -> None:
        self.sock.close()


def _count(data: bytes) -> int:
    """nr_conns of a message we made (v1: byte 4; v0: byte 0)."""
    return data[4] if data[0] == 0 and len(data) > 5 else data[0]


Deliver = Callable[[list[SyncConn], float], Counter[str]]


class Receiver:
    """A backup's socket (make_receive_sock, sync_thread_backup)."""

    def __init__(self, conf: DaemonConf, sock_size: int = 0) -> None:
        index, _, mtu = interface(conf.mcast_ifn)
        self.conf = conf
        self.maxlen = maxlen(conf, mtu)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s = self.sock
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if sock_size:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sock_size)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, conf.mcast_ifn.encode())
            s.bind((conf.mcast_group, conf.mcast_port))
            group = socket.inet_aton(conf.mcast_group)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, _mreqn(group, index))
            s.setblocking(False)
        except OSError:
            self.sock.close()
            raise
        self.own: frozenset[bytes] = local_addresses()
        self.counts: Counter[str] = Counter()

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self, deliver: Deliver, now: float) -> None:
        """What came, RECV_BATCH datagrams at most: decoded, counted, delivered."""
        for _ in range(RECV_BATCH):
            try:
                data, (source, _) = self.sock.recvfrom(self.maxlen)
            except BlockingIOError:
                return
            if socket.inet_aton(source) in self.own:
                self.counts["own"] += 1
                continue
            self.counts["messages_received"] += 1
            decoded = sync.decode(data, self.conf.syncid)
            self.counts.update(decoded.errors)
            if decoded.conns:
                self.counts["entries_received"] += len(decoded.conns)
                self.counts.update(deliver(decoded.conns, now))

    def refresh(self) -> None:
        self.own = local_addresses()

    def report(self) -> dict[str, int]:
        return dict(self.counts)

    def close(self) -> None:
        self.sock.close()


def local_addresses() -> frozenset[bytes]:
    """This namespace's IPv4 addresses (a datagram from one of them is our own)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return frozenset(
            socket.inet_aton(msg.get_attr("IFA_ADDRESS"))
            for msg in ipr.get_addr(family=socket.AF_INET)
            if msg.get_attr("IFA_ADDRESS")
        )


def apply(director: Director, conns: list[SyncConn], now: float) -> Counter[str]:
    """ip_vs_proc_conn for each entry: the outcomes, counted."""
    return Counter(sync.proc_conn(director, conn, now) for conn in conns)


class SyncDaemon:
    """Master and backup of one director (ipvs->sync_state, mcfg, bcfg)."""

    def __init__(self, director: Director, deliver: Deliver | None = None) -> None:
        self.director = director
        self.deliver: Deliver = deliver or partial_apply(director)
        self.sender: Sender | None = None
        self.receiver: Receiver | None = None
        self.selector: selectors.BaseSelector | None = None
        # Set by the daemon: the other workers' sync state follows ours.
        self.on_master: Callable[[DaemonConf | None], None] = lambda conf: None
        self.on_backup: Callable[[bool], None] = lambda running: None
        # Set by the daemon: the configuration in force, which a sync daemon refuses
        # if it has mixed-family services (sync.mixed_family).
        self.config: Callable[[], Config] = Config
        self.peer_counts: dict[str, int] = {}
        self.collector = SyncCollector(self)
        self._published: tuple[tuple[tuple[str, int], ...], tuple[str, ...]] = ((), ())

    @property
    def state(self) -> int:
        return (sync.IP_VS_STATE_MASTER if self.sender else 0) | (
            sync.IP_VS_STATE_BACKUP if self.receiver else 0
        )

    def confs(self) -> list[DaemonConf]:
        return [side.conf for side in (self.sender, self.receiver) if side is not None]

    def start(self, conf: DaemonConf) -> None:
        """start_sync_thread: "Daemon has already run" if that state runs (EEXIST);
        OSError if the interface or the sockets fail."""
        if (conf.state == "master" and self.sender) or (conf.state == "backup" and self.receiver):
            raise ConfigError("Daemon has already run")
        mixed = sync.mixed_family(self.config())
        if mixed is not None:
            raise ConfigError(mixed)
        size = self.director.sysctls.sync_sock_size
        if conf.state == "master":
            self.sender = Sender(conf, self.director, size)
            self.on_master(conf)
        else:
            self.receiver = Receiver(conf, size)
            if self.selector is not None:
                self._watch(self.selector)
            self.on_backup(True)
        self._tell()
        log.info("sync daemon started: state = %s, mcast_ifn = %s, syncid = %d",
                 conf.state.upper(), conf.mcast_ifn, conf.syncid)  # fmt: skip

    def stop(self, state: str) -> None:
        """stop_sync_thread: "No daemon is running" if that state does not (ESRCH)."""
        if state == "master" and self.sender is not None:
            self.sender.close()
            self.sender = None
            self.on_master(None)
        elif state == "backup" and self.receiver is not None:
            if self.selector is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(self.receiver)
            self.receiver.close()
            self.receiver = None
            self.on_backup(False)
        else:
            raise ConfigError("No daemon is running")
        self._tell()
        log.info("sync daemon stopped: state = %s", state.upper())

    def _tell(self) -> None:
        self.director.set_sync(self.state, self.sender.master if self.sender else None)

    def attach(self, selector: selectors.BaseSelector | None) -> None:
        """The loop's selector (None when it ends): the backup's socket is watched."""
        self.selector = selector
        if selector is not None and self.receiver is not None:
            self._watch(selector)

    def _watch(self, selector: selectors.BaseSelector) -> None:
        if self.receiver is not None:
            selector.register(self.receiver, selectors.EVENT_READ, ("sync", self.on_readable))

    def on_readable(self) -> None:
        import time

        if self.receiver is not None:
            self.receiver.read(self.deliver, time.monotonic())

    def flush(self, now: float) -> None:
        if self.sender is not None:
            self.sender.flush(now)

    def next_wakeup(self) -> float | None:
        return None if self.sender is None else self.sender.next_wakeup()

    def tick(self) -> None:
        """Once a second: this namespace's addresses again (for the own-datagram check)
        and the counters for Prometheus."""
        if self.receiver is not None:
            self.receiver.refresh()
        self.publish()

    def counts(self) -> Counter[str]:
        total: Counter[str] = Counter(self.peer_counts)
        for side in (self.sender, self.receiver):
            if side is not None:
                total.update(side.report())
        return total

    def publish(self) -> None:
        states = tuple(c.state for c in self.confs())
        self._published = (tuple(sorted(self.counts().items())), states)

    def close(self) -> None:
        for state in ("master", "backup"):
            with contextlib.suppress(ConfigError):
                self.stop(state)


def partial_apply(director: Director) -> Deliver:
    return lambda conns, now: apply(director, conns, now)


# director_sync_* counters: (family, help, the counts' keys as label values).
_DIRECTIONS = {"sent": "messages_sent", "received": "messages_received"}
_ENTRIES = {"sent": "entries_sent", "received": "entries_received"}
_APPLIED = ("new", "update", "replaced", "stale", "no_dest")
_IGNORED = sync.IGNORED


class SyncCollector(Collector):
    """Prometheus: sync messages and entries sent and received, what the backup did
    with the entries, and refusals by reason (director.core.sync.REASONS)."""

    def __init__(self, daemon: SyncDaemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Any]:
        items, states = self.daemon._published  # replaced whole by the loop
        counts = dict(items)
        running = GaugeMetricFamily(
            "director_sync_daemon", "1 while the sync daemon of that state runs.", labels=["state"]
        )
        for state in ("master", "backup"):
            running.add_metric([state], 1.0 if state in states else 0.0)
        yield running
        for name, text, keys in (
            ("director_sync_messages", "Sync messages sent and received.", _DIRECTIONS),
            ("director_sync_entries", "Sync entries sent and received.", _ENTRIES),
        ):
            family = CounterMetricFamily(name, text, labels=["direction"])
            for direction, key in keys.items():
                family.add_metric([direction], counts.get(key, 0))
            yield family
        applied = CounterMetricFamily(
            "director_sync_applied", "Received entries, by what the backup did.", labels=["outcome"]
        )
        for outcome in _APPLIED:
            applied.add_metric([outcome], counts.get(outcome, 0))
        yield applied
        errors = CounterMetricFamily(
            "director_sync_errors",
            "Sync datagrams and entries refused or not sent, by reason.",
            labels=["reason"],
        )
        reasons = [*sync.REASONS, *_IGNORED, "qlen_max"]
        reasons += sorted(k for k in counts if k.startswith("send_"))
        for reason in reasons:
            errors.add_metric([reason], counts.get(reason, 0))
        yield errors
