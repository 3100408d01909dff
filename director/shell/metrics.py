"""Prometheus metrics on ``--metrics-listen HOST:PORT`` (SPEC §2).

The families of node_exporter's IPVS collector, renamed ``node_ipvs_`` -> ``director_``
and labelled per virtual service (``proto``, ``local_address``, ``local_port``,
``local_mark``) and per real server (those plus ``remote_address``, ``remote_port``),
with node_exporter's label values: ``local_mark`` is "" for TCP/UDP services and the
mark as /proc/net/ip_vs prints it (``%08X``) for firewall-mark services, whose
``local_address`` is "" and ``local_port`` "0"; an address as Go's net.IP.String prints
it (``address_label``: node_exporter labels with procfs's net.IP), IPv6 in RFC 5952's
short form without brackets.  Beside them, the director's own health
and the estimator's rates as gauges.

The counters are the raw ones, which never go back: ``dirctl zero`` changes what
``dirctl list --stats`` shows (as ``ipvsadm -Z`` does), not what Prometheus sees, so
``rate()`` over them has no false resets.

Threads: the daemon's loop, which alone touches the core, builds an immutable
``Sample`` once per tick and publishes it (one reference assignment); the HTTP server
runs in a thread of its own and only ever reads the sample it finds.  A scrape never
walks the connection table and never races the packet path.  The same listener serves
the read-only status page (``/``, ``/status.json``: director.shell.status) of the same
sample.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from director.core.engine import Director
from director.core.service import PROTO_NAMES, Dest, Service, unpack_addr
from director.core.xmit import unreachable
from director.model.config import ConfigError
from director.shell.supervise import restarts

log = logging.getLogger(__name__)

SERVICE_LABELS = ("proto", "local_address", "local_port", "local_mark")
# node_exporter's fullIpvsBackendLabels order.
BACKEND_LABELS = (
    "local_address",
    "local_port",
    "remote_address",
    "remote_port",
    "proto",
    "local_mark",
)

Five = tuple[int, int, int, int, int]


@dataclass(frozen=True, slots=True)
class BackendSample:
    labels: tuple[str, ...]  # BACKEND_LABELS' values
    active: int
    inactive: int
    weight: int
    rates: Five  # cps, inpps, outpps, inbps, outbps
    unreachable: int = 0  # 1 while no usable route leads to it (DR, TUN)


@dataclass(frozen=True, slots=True)
class ServiceSample:
    labels: tuple[str, ...]  # SERVICE_LABELS' values
    counts: Five  # conns, inpkts, outpkts, inbytes, outbytes (raw)
    rates: Five
    backends: tuple[BackendSample, ...]


@dataclass(frozen=True, slots=True)
class Sample:
    """What one scrape shows: everything copied out of the core at one tick."""

    services: tuple[ServiceSample, ...] = ()
    totals: Five = (0, 0, 0, 0, 0)
    total_rates: Five = (0, 0, 0, 0, 0)
    conn_entries: int = 0
    verdicts: tuple[tuple[str, int], ...] = ()
    drops: tuple[tuple[str, int], ...] = ()
    passes: tuple[tuple[str, int], ...] = ()
    # What the application helpers did and left alone (director.core.app), by name.
    app_events: tuple[tuple[str, int], ...] = ()
    restarts: int = 0
    defenses: tuple[tuple[str, int], ...] = ()  # 1 while a defence is active
    drop_rate: int = 0
    conn_limit: int = 0
    worker_errors: tuple[tuple[str, int], ...] = ()
    loop_errors: tuple[tuple[str, int], ...] = ()
    # Per NFQUEUE: the worker's counters (packets, gso_packets, verdicts, ...) and the
    # kernel's for that queue (waiting, kernel_dropped, ...; see QUEUE_FAMILIES).
    queues: tuple[tuple[int, Mapping[str, int]], ...] = ()
    # The fast path's follower of conntrack (Follower.report), summed over the workers;
    # empty in every-packet mode.
    fast_path: tuple[tuple[str, int], ...] = ()
    # What the status page adds while it is watched (director.shell.status.rows): the
    # services in ``list --json``'s shape with health and configured weights, the sync
    # daemons; built afresh each tick and never changed after, like the rest.
    status: Mapping[str, Any] = field(default_factory=dict)


def address_label(packed: bytes) -> str:
    """An address as node_exporter's labels show it: Go's net.IP.String (src/net/ip.go)
    of the address procfs read.  IPv4 dotted; an IPv4-mapped IPv6 address (To4 finds
    one) dotted too; any other IPv6 address in lower-case hex groups without leading
    zeros, the longest run of two or more zero groups (the first of equal ones) as
    "::" (RFC 5952 §4)."""
    if len(packed) == 4:
        return unpack_addr(packed)
    if packed[:10] == bytes(10) and packed[10:12] == b"\xff\xff":
        return unpack_addr(packed[12:])
    groups = [packed[i] << 8 | packed[i + 1] for i in range(0, 16, 2)]
    best, best_len, at = -1, 1, 0
    while at < 8:
        end = at
        while end < 8 and groups[end] == 0:
            end += 1
        if end - at > best_len:
            best, best_len = at, end - at
        at = end + 1 if end > at else at + 1
    words = [f"{g:x}" for g in groups]
    if best < 0:
        return ":".join(words)
    return ":".join(words[:best]) + "::" + ":".join(words[best + best_len :])


def service_labels(svc: Service) -> tuple[str, str, str, str]:
    proto, addr, port = svc.key
    if not proto:  # firewall-mark service: "FWM  %08X" in /proc/net/ip_vs
        return ("FWM", "", "0", f"{port:08X}")
    return (PROTO_NAMES.get(proto, str(proto)), address_label(addr), str(port), "")


def _backend(svc_labels: tuple[str, str, str, str], dest: Dest) -> BackendSample:
    proto, local_address, local_port, local_mark = svc_labels
    return BackendSample(
        labels=(
            local_address,
            local_port,
            address_label(dest.addr),
            str(dest.port),
            proto,
            local_mark,
        ),
        active=dest.activeconns,
        inactive=dest.inactconns,
        weight=dest.weight,
        rates=dest.stats.rates(),
        unreachable=int(unreachable(dest) is not None),
    )


def take_sample(
    director: Director,
    worker_errors: Mapping[str, int],
    loop_errors: Mapping[str, int] | None = None,
    queues: tuple[tuple[int, Mapping[str, int]], ...] = (),
    fast_path: Mapping[str, int] | None = None,
) -> Sample:
    """Copy what the metrics show out of the core (services and servers, not conns)
    and the queues' counters (already copied by the caller)."""
    services = []
    for svc in director.services:
        labels = service_labels(svc)
        services.append(
            ServiceSample(
                labels=labels,
                counts=svc.stats.counts(),
                rates=svc.stats.rates(),
                backends=tuple(_backend(labels, d) for d in svc.dests),
            )
        )
    return Sample(
        services=tuple(services),
        totals=director.totals.counts(),
        total_rates=director.totals.rates(),
        conn_entries=len(director.conns),
        verdicts=tuple(sorted(director.verdicts.items())),
        drops=tuple(sorted(director.drops.items())),
        passes=tuple(sorted(director.passes.items())),
        app_events=tuple(sorted(director.apps.counters.items())),
        restarts=restarts(),
        defenses=(
            ("drop_entry", int(director.defense.drop_entry)),
            ("drop_packet", int(bool(director.defense.drop_rate))),
            ("secure_tcp", int(director.defense.secure)),
        ),
        drop_rate=director.defense.drop_rate,
        conn_limit=director.conn_limit,
        worker_errors=tuple(sorted(worker_errors.items())),
        loop_errors=tuple(sorted((loop_errors or {}).items())),
        queues=tuple((queue, dict(counts)) for queue, counts in queues),
        fast_path=tuple(sorted((fast_path or {}).items())),
    )


def add_reports(sample: Sample, reports: Iterable[Mapping[str, Any]]) -> Sample:
    """The sample of worker 0 with the other workers' figures added (their ``report``,
    director.shell.peer): the counts of entries, verdicts, drops and passes, the table
    caps, their errors and their queues; a defence is on while it is on in any.  The
    services' and real servers' figures are already the whole director's (the board)."""
    reports = list(reports)
    if not reports:
        return sample

    def summed(own: tuple[tuple[str, int], ...], key: str) -> tuple[tuple[str, int], ...]:
        total: dict[str, int] = dict(own)
        for report in reports:
            for name, count in report.get(key, {}).items():
                total[name] = total.get(name, 0) + count
        return tuple(sorted(total.items()))

    defenses = tuple(
        (name, max([on, *(r["defenses"].get(name, 0) for r in reports)]))
        for name, on in sample.defenses
    )
    queues = sample.queues + tuple(
        (queue, dict(counts)) for r in reports for queue, counts in r["queues"]
    )
    return replace(
        sample,
        conn_entries=sample.conn_entries + sum(r["conn_entries"] for r in reports),
        verdicts=summed(sample.verdicts, "verdicts"),
        drops=summed(sample.drops, "drops"),
        passes=summed(sample.passes, "passes"),
        app_events=summed(sample.app_events, "app_events"),
        defenses=defenses,
        drop_rate=max([sample.drop_rate, *(r["drop_rate"] for r in reports)]),
        conn_limit=sample.conn_limit + sum(r["conn_limit"] for r in reports),
        worker_errors=summed(sample.worker_errors, "worker_errors"),
        loop_errors=summed(sample.loop_errors, "loop_errors"),
        queues=queues,
        fast_path=summed(sample.fast_path, "fast_path") if sample.fast_path else (),
    )


# (name, help) per position of ServiceSample.counts, as node_exporter words them.
_COUNTERS = (
    ("director_connections", "The total number of connections made."),
    ("director_incoming_packets", "The total number of incoming packets."),
    ("director_outgoing_packets", "The total number of outgoing packets."),
    ("director_incoming_bytes", "The total amount of incoming data."),
    ("director_outgoing_bytes", "The total amount of outgoing data."),
)
# (suffix, help) per position of the estimator's rates.
_RATES = (
    ("connections_per_second", "connections per second"),
    ("incoming_packets_per_second", "incoming packets per second"),
    ("outgoing_packets_per_second", "outgoing packets per second"),
    ("incoming_bytes_per_second", "incoming bytes per second"),
    ("outgoing_bytes_per_second", "outgoing bytes per second"),
)
_ESTIMATOR = "IPVS's 2-second moving average"
# Per queue (label ``queue``): (counter key, family, kind, help).  The worker's own, then
# the kernel's line of /proc/net/netfilter/nfnetlink_queue (nfnetlink_queue.c seq_show).
QUEUE_FAMILIES: tuple[tuple[str, str, str, str], ...] = (
    ("packets", "director_nfqueue_packets", "counter",
     "Packets the worker took from the queue (a GSO super-packet counts once)."),
    ("gso_packets", "director_nfqueue_gso_packets", "counter",
     "GSO super-packets among them (NFQA_SKB_GSO), each many segments on the wire."),
    ("partial_checksum_packets", "director_nfqueue_partial_checksum_packets", "counter",
     "Packets whose transport checksum the kernel had left partial (NFQA_SKB_CSUMNOTREADY)."),
    ("verdicts", "director_nfqueue_verdicts", "counter",
     "Verdicts the worker gave (one per packet; a run of plain ones in one batch message)."),
    ("verdict_sends", "director_nfqueue_verdict_sends", "counter",
     "System calls that carried them (one per batch of waiting packets)."),
    ("waiting", "director_nfqueue_waiting", "gauge",
     "Packets in the kernel's queue waiting for a verdict (queue_total)."),
    ("kernel_dropped", "director_nfqueue_kernel_dropped", "counter",
     "Packets the kernel dropped because the queue was full (queue_dropped)."),
    ("kernel_user_dropped", "director_nfqueue_kernel_user_dropped", "counter",
     "Packets the kernel dropped because the worker's socket was full (queue_user_dropped)."),
    ("kernel_id_sequence", "director_nfqueue_kernel_id_sequence", "counter",
     "Packets the kernel queued (its packet id sequence; it wraps at 2**32)."),
)  # fmt: skip


class DirectorCollector(Collector):
    """Builds the metric families from the last published ``Sample``."""

    def __init__(self) -> None:
        self.sample = Sample()

    def publish(self, sample: Sample) -> None:
        self.sample = sample  # one reference assignment: readers see old or new

    def collect(self) -> Iterator[Metric]:
        sample = self.sample
        yield from self._services(sample)
        yield from self._backends(sample)
        yield from self._health(sample)

    def _services(self, sample: Sample) -> Iterator[Metric]:
        for index, (name, text) in enumerate(_COUNTERS):
            family = CounterMetricFamily(name, text, labels=SERVICE_LABELS)
            for svc in sample.services:
                family.add_metric(svc.labels, svc.counts[index])
            yield family
        for index, (suffix, text) in enumerate(_RATES):
            gauge = GaugeMetricFamily(
                f"director_{suffix}",
                f"Virtual service {text} ({_ESTIMATOR}).",
                labels=SERVICE_LABELS,
            )
            for svc in sample.services:
                gauge.add_metric(svc.labels, svc.rates[index])
            yield gauge

    def _backends(self, sample: Sample) -> Iterator[Metric]:
        backends = [b for svc in sample.services for b in svc.backends]
        gauges: tuple[tuple[str, str, Callable[[BackendSample], int]], ...] = (
            (
                "director_backend_connections_active",
                "The current active connections by local and remote address.",
                lambda b: b.active,
            ),
            (
                "director_backend_connections_inactive",
                "The current inactive connections by local and remote address.",
                lambda b: b.inactive,
            ),
            (
                "director_backend_weight",
                "The current backend weight by local and remote address.",
                lambda b: b.weight,
            ),
            (
                "director_backend_unreachable",
                "1 while no usable route leads to the real server (DR, TUN): its packets "
                "are dropped until one appears.",
                lambda b: b.unreachable,
            ),
        )
        for name, text, value in gauges:
            family = GaugeMetricFamily(name, text, labels=BACKEND_LABELS)
            for backend in backends:
                family.add_metric(backend.labels, value(backend))
            yield family
        for index, (suffix, text) in enumerate(_RATES):
            family = GaugeMetricFamily(
                f"director_backend_{suffix}",
                f"Real server {text} ({_ESTIMATOR}).",
                labels=BACKEND_LABELS,
            )
            for backend in backends:
                family.add_metric(backend.labels, backend.rates[index])
            yield family

    def _health(self, sample: Sample) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "director_connection_entries",
            "Entries in the connection table.",
            value=sample.conn_entries,
        )
        yield _labelled(
            CounterMetricFamily("director_verdicts", "Packets by verdict.", labels=["verdict"]),
            sample.verdicts,
        )
        yield _labelled(
            CounterMetricFamily("director_drops", "Packets dropped, by reason.", labels=["reason"]),
            sample.drops,
        )
        yield _labelled(
            CounterMetricFamily(
                "director_passed",
                "Packets left to the kernel as they were, by reason.",
                labels=["reason"],
            ),
            sample.passes,
        )
        yield _labelled(
            CounterMetricFamily(
                "director_app_events",
                "What the application helpers (ip_vs_ftp) did with control connections' "
                "packets, and the lines they left alone (ftp_partial, ftp_foreign).",
                labels=["event"],
            ),
            sample.app_events,
        )
        yield _labelled(
            GaugeMetricFamily(
                "director_defense_active",
                "1 while a DoS defence (drop_entry, drop_packet, secure_tcp) is on.",
                labels=["defense"],
            ),
            sample.defenses,
        )
        yield GaugeMetricFamily(
            "director_defense_drop_rate",
            "drop_packet: one new connection in this many is dropped (0: none).",
            value=sample.drop_rate,
        )
        yield GaugeMetricFamily(
            "director_connection_entries_limit",
            "Entries the connection table may hold (its memory cap), 0 for none.",
            value=sample.conn_limit,
        )
        yield CounterMetricFamily(
            "director_worker_restarts",
            "Times the supervisor started the daemon again after it died.",
            value=sample.restarts,
        )
        yield CounterMetricFamily(
            "director_scheduling_failures",
            "New connections for which the scheduler found no real server.",
            value=dict(sample.drops).get("no_dest", 0),
        )
        yield _labelled(
            CounterMetricFamily(
                "director_worker_errors",
                "NFQUEUE worker errors: exceptions on a packet, raw-socket send errors.",
                labels=["kind"],
            ),
            sample.worker_errors,
        )
        yield _labelled(
            CounterMetricFamily(
                "director_loop_errors",
                "Exceptions the daemon's loop caught and went on after, by where "
                "(packets, control, health, netlink, a step of the tick, the stop).",
                labels=["where"],
            ),
            sample.loop_errors,
        )
        yield from _queues(sample)
        yield from _fast_path(sample)
        for index, (suffix, text) in enumerate(_RATES):
            yield GaugeMetricFamily(
                f"director_total_{suffix}",
                f"All services' {text} ({_ESTIMATOR}).",
                value=sample.total_rates[index],
            )


Family = TypeVar("Family", CounterMetricFamily, GaugeMetricFamily)


def _fast_path(sample: Sample) -> Iterator[Metric]:
    """The kernel fast path's follower of conntrack (absent in every-packet mode)."""
    if not sample.fast_path:
        return
    counts = dict(sample.fast_path)
    events = CounterMetricFamily(
        "director_fast_path_events",
        "Conntrack events applied to the fast path's connection entries, by kind.",
        labels=["kind"],
    )
    for kind in ("update", "destroy"):
        events.add_metric([kind], counts.get(kind, 0))
    yield events
    for key, name, text in (
        ("dumps", "dumps", "Dumps of director's conntrack entries (states, time left)."),
        ("overruns", "overruns",
         "Times conntrack could not deliver events (ENOBUFS); a dump made up for them."),
        ("malformed", "malformed", "Ctnetlink messages that could not be read."),
    ):  # fmt: skip
        yield CounterMetricFamily(f"director_fast_path_{name}", text, value=counts.get(key, 0))


def _queues(sample: Sample) -> Iterator[Metric]:
    for key, name, kind, text in QUEUE_FAMILIES:
        family: CounterMetricFamily | GaugeMetricFamily = (
            CounterMetricFamily(name, text, labels=["queue"])
            if kind == "counter"
            else GaugeMetricFamily(name, text, labels=["queue"])
        )
        for queue, counts in sample.queues:
            if key in counts:
                family.add_metric([str(queue)], counts[key])
        yield family


def _labelled(family: Family, items: Iterable[tuple[str, int]]) -> Family:
    for label, value in items:
        family.add_metric([label], value)
    return family


# --- the HTTP side -------------------------------------------------------------------


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT``, the host explicit (no wildcard by omission)."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host:
        raise ConfigError(f"--metrics-listen {text!r}: want HOST:PORT with an explicit host")
    try:
        ipaddress.ip_address(host)
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"--metrics-listen {text!r}: want a numeric address and port") from None
    if not 0 < port < 65536:
        raise ConfigError(f"--metrics-listen {text!r}: port out of range")
    return host, port


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""


class _Server4(WSGIServer):
    address_family = socket.AF_INET


class _Server6(WSGIServer):
    address_family = socket.AF_INET6


# A page other than /metrics (director.shell.status): its headers and body, from the
# latest sample (a function that returns the one published last).
Page = Callable[[Callable[[], Sample]], tuple[list[tuple[str, str]], bytes]]


def _routes(app: Any, pages: Mapping[str, Page], sample: Callable[[], Sample]) -> Any:
    """Serve /metrics and the read-only ``pages`` (GET and HEAD), nothing else."""

    def routed(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO")
        if path == "/metrics":
            return app(environ, start_response)
        page = pages.get(path or "")
        if page is None:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"director: metrics are at /metrics\n"]
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
            return [b"director: read-only\n"]
        headers, body = page(sample)
        start_response("200 OK", [*headers, ("Content-Length", str(len(body)))])
        return [b"" if environ["REQUEST_METHOD"] == "HEAD" else body]

    return routed


class MetricsServer:
    """The collector in a registry of its own, served over HTTP by one thread."""

    def __init__(self, listen: str, pages: Mapping[str, Page] | None = None) -> None:
        self.host, self.port = parse_listen(listen)
        self.pages = dict(pages or {})
        self.collector = DirectorCollector()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        server_class = _Server6 if ":" in self.host else _Server4
        self._server = make_server(
            self.host,
            self.port,
            _routes(make_wsgi_app(self.registry), self.pages, lambda: self.collector.sample),
            server_class=server_class,
            handler_class=_QuietHandler,
        )
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()
        log.info("metrics on http://%s/metrics", _hostport(self.host, self.port))

    def publish(self, sample: Sample) -> None:
        self.collector.publish(sample)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
