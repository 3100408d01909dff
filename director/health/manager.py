"""What the daemon holds: the checks' states, the table health makes of the intent,
and what ``dirctl list`` and the metrics show of it.

It lives in the daemon's loop (single-threaded): ``reconfigure`` on every commit,
``on_readable`` when the health thread has results.  The rise/fall counting is
``state.observe``, the table ``effective.effective``: both pure.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from director.ctl.snapshot import Snapshot
from director.health.checkers import Target
from director.health.effective import effective, quorum_states
from director.health.runner import Runner
from director.health.state import DOWN, CheckState, observe
from director.model.config import Config, DestConf
from director.model.health import DestKey, ServiceKey

log = logging.getLogger("director.health")

Key = tuple[ServiceKey, DestKey]


def targets_of(config: Config) -> dict[Key, Target]:
    """Every (service, real server) with a check, and what to check."""
    targets: dict[Key, Target] = {}
    for svc in config.services:
        for dest in svc.dests:
            check = config.health.check_for(svc.key, dest.key)
            if check is None:
                continue
            via_vip = check.via_vip and dest.method in ("droute", "tunnel")
            if check.via_vip and not via_vip:
                check = replace(check, via_vip=False)  # a service default, on a NAT server
            targets[(svc.key, dest.key)] = Target(
                check=check,
                addr=dest.addr,
                port=check.port or dest.port,
                method=dest.method,
                vip=svc.addr if via_vip else "",
                vport=svc.port if via_vip else 0,
            )
    return targets


def _name(key: Key) -> str:
    (proto, vaddr, vport), (addr, port) = key
    service = f"FWM {vport}" if proto == "fwm" else f"{proto.upper()} {vaddr}:{vport}"
    return f"{service} real server {addr}:{port}"


class HealthManager:
    def __init__(self, runner: Runner | None = None) -> None:
        self.runner = runner or Runner()
        self.config = Config()
        self.targets: dict[Key, Target] = {}
        self.states: dict[Key, CheckState] = {}
        self.quorum: dict[ServiceKey, bool] = {}
        self.transitions: Counter[tuple[str, str]] = Counter()  # (from, to)
        self.collector = HealthCollector(self)

    # -- life cycle ----------------------------------------------------------------

    def fileno(self) -> int:
        return self.runner.fileno()

    def start(self) -> None:
        self.runner.start()

    def stop(self) -> None:
        self.runner.stop()

    # -- the table -------------------------------------------------------------------

    def healthy(self) -> dict[Key, bool]:
        return {key: state.healthy for key, state in self.states.items()}

    def effective(self, config: Config) -> Config:
        """The table to run for ``config`` with what the checks know now."""
        healthy = self.healthy()
        return effective(config, healthy, quorum_states(config, healthy, self.quorum))

    def worst(self, config: Config) -> Config:
        """``config`` with every sorry server in: what the routes must allow."""
        down = {(s.key, d.key): False for s in config.services for d in s.dests}
        return effective(config, {}, quorum_states(config, down, {}))

    def reconfigure(self, config: Config) -> None:
        """Follow a committed configuration: start and stop checks (a check that
        changed starts again from unknown)."""
        self.config = config
        targets = targets_of(config)
        now = time.monotonic()
        self.states = {
            key: self.states[key]
            if key in self.states and self.targets.get(key) == target
            else CheckState(since=now)
            for key, target in targets.items()
        }
        self.targets = targets
        self.runner.set_targets(targets)
        self._update_quorum()

    def on_readable(self) -> bool:
        """Take the health thread's results; True when the table must change."""
        changed = False
        for result in self.runner.drain():
            target = self.targets.get(result.key)
            if target != result.target:
                continue  # the check was changed or removed meanwhile
            key: Key = result.key
            before = self.states[key]
            check = target.check
            after, moved = observe(before, result.ok, result.reason, check.rise, check.fall,
                                   result.at)  # fmt: skip
            self.states[key] = after
            if moved:
                self.transitions[(before.state, after.state)] += 1
                if after.state == DOWN:
                    log.warning("%s is down: %s", _name(key), result.reason)
                else:
                    log.info("%s is %s", _name(key), after.state)
                changed = changed or before.healthy != after.healthy
        return self._update_quorum() or changed

    def _update_quorum(self) -> bool:
        new = quorum_states(self.config, self.healthy(), self.quorum)
        moved = False
        for key, up in new.items():
            if self.quorum.get(key, True) == up:
                continue
            moved = True
            policy = self.config.health.policy(key)
            proto, addr, port = key
            log.warning("%s %s:%d: quorum %s", proto.upper(), addr, port,
                        "gained" if up else "lost")  # fmt: skip
            if policy is not None:
                self.runner.run_command(policy.quorum_up if up else policy.quorum_down)
        self.quorum = new
        return moved

    # -- what is shown -----------------------------------------------------------------

    def dest_state(self, service: ServiceKey, dest: DestKey) -> str | None:
        state = self.states.get((service, dest))
        if state is not None:
            return state.state
        policy = self.config.health.policy(service)
        if policy is not None and policy.sorry == dest and not self.quorum.get(service, True):
            return "sorry"
        return None

    def annotate(self, snap: Snapshot) -> None:
        """Give each listed real server its ``state`` (checked ones and sorry servers)."""
        for svc in snap["services"]:
            key = _service_key(svc["protocol"], svc["addr"], svc["port"], svc["fwmark"])
            for dest in svc["dests"]:
                state = self.dest_state(key, (dest["addr"], dest["port"]))
                if state is not None:
                    dest["state"] = state

    def report(self) -> list[dict[str, Any]]:
        """``dirctl list --checks``: one row per checked real server."""
        now = time.monotonic()
        rows: list[dict[str, Any]] = []
        for key, target in self.targets.items():
            state = self.states[key]
            check = target.check
            (proto, vaddr, vport), (addr, port) = key
            rows.append(
                {
                    "service": [proto, vaddr, vport],
                    "server": [addr, port],
                    "type": check.kind,
                    "target": [target.addr, target.port],
                    "via_vip": bool(target.vip),
                    "interval": check.interval,
                    "rise": check.rise,
                    "fall": check.fall,
                    "on_failure": check.on_failure,
                    "state": state.state,
                    "checks": state.checks,
                    "failures": state.failures,
                    "successes": state.successes,
                    "last_error": state.last_error,
                    "for_seconds": round(now - state.since, 1),
                }
            )
        return rows


def _service_key(protocol: str, addr: str, port: int, fwmark: int) -> ServiceKey:
    if protocol == "FWM":
        return ("fwm", addr, fwmark)  # addr: "" or "::" (IPv6, -f MARK -6)
    return (protocol.lower(), addr, port)


class HealthCollector(Collector):
    """Prometheus: the state of each checked real server and the transitions."""

    def __init__(self, manager: HealthManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[Any]:
        # Reads plain dicts the loop replaces whole: a scrape sees one or the other.
        states = dict(self.manager.states)
        transitions = dict(self.manager.transitions)
        up = GaugeMetricFamily(
            "director_backend_up",
            "1 if the real server passes its health check (unknown counts as up).",
            labels=["proto", "local_address", "local_port", "remote_address", "remote_port"],
        )
        for ((proto, vaddr, vport), (addr, port)), state in sorted(states.items()):
            up.add_metric([proto.upper(), vaddr, str(vport), addr, str(port)],
                          1.0 if state.healthy else 0.0)  # fmt: skip
        yield up
        moves = CounterMetricFamily(
            "director_health_transitions",
            "Health state changes of real servers.",
            labels=["from", "to"],
        )
        for (before, after), count in sorted(transitions.items()):
            moves.add_metric([before, after], float(count))
        yield moves


__all__ = ["DestConf", "HealthManager", "targets_of"]
