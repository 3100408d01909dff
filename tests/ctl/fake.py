"""A fake control target: the daemon's side of dispatch, without any data plane."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from director.core.sysctl import Sysctls
from director.ctl.snapshot import ConnDict, DestDict, ServiceDict, Snapshot, StatsDict
from director.model.config import Config, ServiceConf

ZERO_STATS: StatsDict = {
    "conns": 0,
    "inpkts": 0,
    "outpkts": 0,
    "inbytes": 0,
    "outbytes": 0,
    "cps": 0,
    "inpps": 0,
    "outpps": 0,
    "inbps": 0,
    "outbps": 0,
}


def service_dict(svc: ServiceConf) -> ServiceDict:
    dests: list[DestDict] = [
        {
            "addr": d.addr,
            "port": d.port,
            "method": d.method,
            "weight": d.weight,
            "u_threshold": d.u_threshold,
            "l_threshold": d.l_threshold,
            "activeconns": 0,
            "inactconns": 0,
            "persistconns": 0,
            "stats": dict(ZERO_STATS),  # type: ignore[typeddict-item]
        }
        for d in svc.dests
    ]
    return {
        "protocol": svc.protocol.upper(),
        "addr": svc.addr,
        "port": svc.port,
        "fwmark": svc.fwmark,
        "scheduler": svc.scheduler,
        "persistent": svc.persistent,
        "netmask": svc.netmask,
        "sched_flags": list(svc.sched_flags),
        "ops": svc.ops,
        "stats": dict(ZERO_STATS),  # type: ignore[typeddict-item]
        "dests": dests,
    }


@dataclass
class FakeTarget:
    config: Config = field(default_factory=Config)
    commits: list[Config] = field(default_factory=list)
    zeroed: list[tuple[str, str, int] | None] = field(default_factory=list)
    conns: list[ConnDict] = field(default_factory=list)

    def commit(self, config: Config) -> None:
        self.commits.append(config)
        self.config = config

    def snapshot(self, *, conns: bool) -> Snapshot:
        t = self.config.timeouts
        return {
            "version": "1.2.1",
            "conn_tab_size": 4096,
            "services": [service_dict(s) for s in self.config.services],
            "conns": list(self.conns) if conns else [],
            "timeouts": {"tcp": t.tcp, "tcpfin": t.tcpfin, "udp": t.udp},
            "totals": dict(ZERO_STATS),  # type: ignore[typeddict-item]
        }

    def zero(self, key: tuple[str, str, int] | None) -> None:
        self.zeroed.append(key)

    sysctl: Sysctls = field(default_factory=Sysctls)
    which_answer: dict[str, Any] | None = None

    def which(
        self, protocol: str, client: tuple[str, int], virtual: tuple[str, int], mark: int
    ) -> dict[str, Any] | None:
        return self.which_answer

    def sysctls(self, changes: dict[str, str]) -> dict[str, int | bool]:
        self.sysctl = self.sysctl.updated(changes)
        return self.sysctl.as_dict()
