"""The Prometheus collector: node_exporter's IPVS families and labels, from a sample."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from director.core.engine import Director
from director.core.service import pack_addr
from director.ctl.ipvsadm import load_rules
from director.model.config import ConfigError
from director.shell.metrics import (
    MetricsServer,
    Sample,
    add_reports,
    address_label,
    parse_listen,
    take_sample,
)

RULES = """\
-A -t 203.0.113.5:80 -s rr
-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m -w 3
-A -f 7 -s rr
-a -f 7 -r 198.18.0.3:0 -m -w 2
"""


def _scrape(director: Director, errors: dict[str, int] | None = None) -> dict[str, dict]:  # type: ignore[type-arg]
    server = MetricsServer("127.0.0.1:9")  # never started: only its registry is used
    server.publish(take_sample(director, errors or {}))
    text = generate_latest(server.registry).decode()
    samples: dict[str, dict] = {}  # type: ignore[type-arg]
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = tuple(sorted(s.labels.items()))
            samples.setdefault(s.name, {})[key] = s.value
    return samples


def test_service_counters_and_backend_gauges_with_node_exporter_labels() -> None:
    director = Director()
    director.configure(load_rules(RULES))
    web = next(s for s in director.services if s.key[0])
    web.stats.conns, web.stats.inpkts, web.stats.outbytes = 4, 40, 4000
    dest = web.dests[0]
    dest.activeconns, dest.inactconns = 2, 1
    web.stats.zero()  # zero changes listings, never what Prometheus sees
    got = _scrape(director, {"send_101": 3})

    web_labels = (
        ("local_address", "203.0.113.5"),
        ("local_mark", ""),
        ("local_port", "80"),
        ("proto", "TCP"),
    )
    fwm_labels = (("local_address", ""), ("local_mark", "00000007"), ("local_port", "0"),
                  ("proto", "FWM"))  # fmt: skip
    assert got["director_connections_total"] == {web_labels: 4.0, fwm_labels: 0.0}
    assert got["director_incoming_packets_total"][web_labels] == 40.0
    assert got["director_outgoing_bytes_total"][web_labels] == 4000.0
    rs1 = tuple(sorted((*web_labels, ("remote_address", "198.18.0.2"), ("remote_port", "80"))))
    assert got["director_backend_connections_active"][rs1] == 2.0
    assert got["director_backend_connections_inactive"][rs1] == 1.0
    assert got["director_backend_weight"][rs1] == 3.0
    rs2 = tuple(sorted((*fwm_labels, ("remote_address", "198.18.0.3"), ("remote_port", "0"))))
    assert got["director_backend_weight"][rs2] == 2.0
    assert got["director_connections_per_second"][web_labels] == 0.0
    assert got["director_worker_errors_total"] == {(("kind", "send_101"),): 3.0}
    assert got["director_connection_entries"] == {(): 0.0}


def test_health_counters_come_from_the_director() -> None:
    director = Director()
    director.verdicts["accept"] += 5
    director.drops["no_dest"] += 2
    director.drops["truncated"] += 1
    got = _scrape(director)
    assert got["director_verdicts_total"] == {(("verdict", "accept"),): 5.0}
    assert got["director_drops_total"][(("reason", "truncated"),)] == 1.0
    assert got["director_scheduling_failures_total"] == {(): 2.0}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:9108", ("127.0.0.1", 9108)), ("[::1]:9108", ("::1", 9108))],
)
def test_listen_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", [":9108", "9108", "localhost:9108", "127.0.0.1:0", "1.2.3.4:x"])
def test_listen_address_must_be_explicit_and_numeric(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_listen(text)


def test_unreachable_real_servers_have_a_gauge_of_one() -> None:
    """A DR real server with no route (``dest.route`` None) is 1, a NAT one 0."""
    director = Director()
    director.configure(
        load_rules(
            "-A -t 203.0.113.5:80 -s rr\n"
            "-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m\n"
            "-a -t 203.0.113.5:80 -r 198.18.0.3:80 -g\n"
        )
    )
    got = _scrape(director)["director_backend_unreachable"]
    by_addr = {dict(labels)["remote_address"]: value for labels, value in got.items()}
    assert by_addr == {"198.18.0.2": 0.0, "198.18.0.3": 1.0}


def test_the_loops_caught_exceptions_are_counted_by_where() -> None:
    server = MetricsServer("127.0.0.1:9")  # never started: only its registry is used
    server.publish(take_sample(Director(), {}, {"control": 2, "expire": 1}))
    text = generate_latest(server.registry).decode()
    got = {
        tuple(s.labels.items()): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "director_loop_errors_total"
    }
    assert got == {(("where", "control"),): 2.0, (("where", "expire"),): 1.0}


def test_queue_counters_per_queue() -> None:
    """The worker's and the kernel's counters of each NFQUEUE, labelled by queue."""
    server = MetricsServer("127.0.0.1:9")
    queues = (
        (0, {"packets": 10, "verdicts": 10, "verdict_sends": 4}),
        (1, {"packets": 5, "gso_packets": 3, "verdicts": 5, "verdict_sends": 1,
             "kernel_dropped": 2, "kernel_user_dropped": 6, "kernel_id_sequence": 99,
             "waiting": 1}),
    )  # fmt: skip
    server.publish(take_sample(Director(), {}, None, queues))
    got: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(generate_latest(server.registry).decode()):
        for s in family.samples:
            got.setdefault(s.name, {})[s.labels.get("queue", "")] = s.value
    assert got["director_nfqueue_packets_total"] == {"0": 10, "1": 5}
    assert got["director_nfqueue_gso_packets_total"] == {"1": 3}
    assert got["director_nfqueue_verdict_sends_total"] == {"0": 4, "1": 1}
    assert got["director_nfqueue_kernel_dropped_total"] == {"1": 2}
    assert got["director_nfqueue_kernel_user_dropped_total"] == {"1": 6}
    assert got["director_nfqueue_kernel_id_sequence_total"] == {"1": 99}
    assert got["director_nfqueue_waiting"] == {"1": 1}


def _report(**changes: Any) -> dict[str, Any]:
    """Another worker's report (director.shell.peer's ``report``), all zero but
    ``changes``."""
    report: dict[str, Any] = {
        "conn_entries": 0,
        "verdicts": {},
        "drops": {},
        "passes": {},
        "defenses": {"drop_entry": 0, "drop_packet": 0, "secure_tcp": 0},
        "drop_rate": 0,
        "conn_limit": 0,
        "worker_errors": {},
        "loop_errors": {},
        "queues": [],
    }
    report.update(changes)
    return report


def _worker0() -> Sample:
    director = Director()
    director.configure(load_rules(RULES))
    director.verdicts["accept"] += 5
    director.drops["no_dest"] += 2
    director.passes["not_service"] += 1
    director.conn_limit = 1000
    queues = ((0, {"packets": 10}), (1, {"packets": 4, "gso_packets": 1}))
    return take_sample(director, {"send_101": 3}, {"control": 1}, queues)


def test_add_reports_sums_the_other_workers_figures() -> None:
    """The whole director's figures: entries, verdicts, drops and passes by reason,
    table caps and errors summed; every worker's queues listed; a defence on while on
    in any worker (IPVS has one defence state for all CPUs: ip_vs_ctl.c
    update_defense_level)."""
    own = _worker0()
    merged = add_reports(
        own,
        [
            _report(
                conn_entries=7,
                verdicts={"accept": 2, "drop": 1},
                drops={"no_dest": 3, "truncated": 4},
                passes={"not_service": 2},
                defenses={"drop_entry": 1, "drop_packet": 0, "secure_tcp": 0},
                drop_rate=10,
                conn_limit=1000,
                worker_errors={"send_101": 1, "recv": 2},
                loop_errors={"expire": 5},
                queues=[(2, {"packets": 6}), (3, {"packets": 2})],
            ),
            _report(
                conn_entries=1,
                verdicts={"accept": 1},
                defenses={"drop_entry": 0, "drop_packet": 0, "secure_tcp": 1},
                conn_limit=500,
                queues=[(4, {"packets": 1}), (5, {})],
            ),
        ],
    )
    assert merged.conn_entries == own.conn_entries + 8
    assert merged.verdicts == (("accept", 8), ("drop", 1))
    assert merged.drops == (("no_dest", 5), ("truncated", 4))
    assert merged.passes == (("not_service", 3),)
    assert dict(merged.defenses) == {"drop_entry": 1, "drop_packet": 0, "secure_tcp": 1}
    assert merged.drop_rate == 10
    assert merged.conn_limit == 2500
    assert merged.worker_errors == (("recv", 2), ("send_101", 4))
    assert merged.loop_errors == (("control", 1), ("expire", 5))
    assert [queue for queue, _ in merged.queues] == [0, 1, 2, 3, 4, 5]
    assert dict(merged.queues)[2] == {"packets": 6}
    assert dict(merged.queues)[1] == {"packets": 4, "gso_packets": 1}
    # What the board already made whole is left as it is.
    assert (merged.services, merged.totals, merged.restarts) == (
        own.services,
        own.totals,
        own.restarts,
    )


def test_add_reports_reaches_the_scrape() -> None:
    """The merged sample is what Prometheus sees, queue labels of every worker included."""
    server = MetricsServer("127.0.0.1:9")  # never started: only its registry is used
    merged = add_reports(_worker0(), [_report(drops={"no_dest": 3}, queues=[(2, {"packets": 6})])])
    server.publish(merged)
    got: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(generate_latest(server.registry).decode()):
        for s in family.samples:
            got.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    assert got["director_scheduling_failures_total"] == {(): 5.0}
    assert got["director_nfqueue_packets_total"] == {
        (("queue", "0"),): 10.0,
        (("queue", "1"),): 4.0,
        (("queue", "2"),): 6.0,
    }


def test_add_reports_of_no_other_worker_is_the_sample_itself() -> None:
    own = _worker0()
    assert add_reports(own, []) is own
    assert add_reports(own, iter(())) == own


def test_the_fast_paths_follower_of_conntrack_summed_over_the_workers() -> None:
    """Events applied by kind, dumps, overruns and unreadable messages, every worker's
    added; no such family in every-packet mode."""
    own = take_sample(Director(), {}, fast_path={"update": 4, "destroy": 1, "dumps": 2,
                                                 "overruns": 0, "malformed": 1})  # fmt: skip
    merged = add_reports(own, [_report(fast_path={"update": 6, "destroy": 2, "dumps": 1,
                                                  "overruns": 1, "malformed": 0})])  # fmt: skip
    server = MetricsServer("127.0.0.1:9")  # never started: only its registry is used
    server.publish(merged)
    got: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(generate_latest(server.registry).decode()):
        for s in family.samples:
            got.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    assert got["director_fast_path_events_total"] == {
        (("kind", "update"),): 10.0, (("kind", "destroy"),): 3.0}  # fmt: skip
    assert got["director_fast_path_dumps_total"] == {(): 3.0}
    assert got["director_fast_path_overruns_total"] == {(): 1.0}
    assert got["director_fast_path_malformed_total"] == {(): 1.0}
    server.publish(take_sample(Director(), {}))
    text = generate_latest(server.registry).decode()
    assert "director_fast_path" not in text


@pytest.mark.parametrize(
    ("text", "label"),
    [
        # Go's net.IP.String (src/net/ip.go), worked by hand: the longest run of two or
        # more zero groups becomes "::", the first of equal runs; a lone zero stays.
        ("2001:db8:1::100", "2001:db8:1::100"),
        ("2001:0db8:0000:0001:0001:0001:0001:0001", "2001:db8:0:1:1:1:1:1"),
        ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
        ("2001:0:0:1:0:0:0:1", "2001:0:0:1::1"),
        ("2001:db8::", "2001:db8::"),
        ("::", "::"),
        ("::1", "::1"),
        ("::ffff:203.0.113.5", "203.0.113.5"),  # To4 finds it: printed as IPv4
        ("::203.0.113.5", "::cb00:7105"),  # IPv4-compatible: not To4's, hex groups
        ("203.0.113.5", "203.0.113.5"),
    ],
)
def test_address_labels_as_node_exporter_prints_them(text: str, label: str) -> None:
    assert address_label(pack_addr(text)) == label


def test_ipv6_services_and_real_servers_are_labelled_without_brackets() -> None:
    director = Director()
    director.configure(load_rules(
        "-A -t [2001:db8:1::100]:80 -s rr\n-a -t [2001:db8:1::100]:80 -r [2001:db8:2::2]:8080 -m\n"
    ))  # fmt: skip
    got = _scrape(director)
    svc = (("local_address", "2001:db8:1::100"), ("local_mark", ""), ("local_port", "80"),
           ("proto", "TCP"))  # fmt: skip
    assert svc in got["director_connections_total"]
    rs = tuple(sorted((*svc, ("remote_address", "2001:db8:2::2"), ("remote_port", "8080"))))
    assert got["director_backend_weight"][rs] == 1.0
