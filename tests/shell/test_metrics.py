"""The Prometheus collector: node_exporter's IPVS families and labels, from a sample."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from director.core.engine import Director
from director.ctl.ipvsadm import load_rules
from director.model.config import ConfigError
from director.shell.metrics import MetricsServer, parse_listen, take_sample

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
