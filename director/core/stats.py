"""Per-service, per-real-server and total counters (``struct ip_vs_stats``).

Bytes are whole IP packets, as IPVS counts them (skb->len at the hook).  The packet
path only increments the five plain integers; everything else here (the zero point of
``ipvsadm -Z`` and the rate estimator) is read and written by the daemon's tick and the
control plane, never per packet.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from director.core.estimator import Estimator, Rates

# conns, inpkts, outpkts, inbytes, outbytes
Counts = tuple[int, int, int, int, int]


@dataclass(slots=True)
class Stats:
    conns: int = 0
    inpkts: int = 0
    outpkts: int = 0
    inbytes: int = 0
    outbytes: int = 0
    # The counters when last zeroed (the kernel's kstats0): listings show the counters
    # relative to it (ip_vs_copy_stats); the raw counters never go back.
    base: Counts = (0, 0, 0, 0, 0)
    est: Estimator = field(default_factory=Estimator)

    def counts(self) -> Counts:
        """The raw counters, as they have run since the service or server was made."""
        return (self.conns, self.inpkts, self.outpkts, self.inbytes, self.outbytes)

    def shown(self) -> Counts:
        """The counters since the last ``zero`` (what ipvsadm -L --stats prints)."""
        c0, i0, o0, ib0, ob0 = self.base
        return (
            self.conns - c0,
            self.inpkts - i0,
            self.outpkts - o0,
            self.inbytes - ib0,
            self.outbytes - ob0,
        )

    def rates(self) -> Rates:
        return self.est.read()

    def zero(self) -> None:
        """ip_vs_zero_stats: the current counters become the zero point, rates reset."""
        self.base = self.counts()
        self.est.zero(self.base)

    def as_dict(self) -> dict[str, int]:
        conns, inpkts, outpkts, inbytes, outbytes = self.shown()
        return {
            "conns": conns,
            "inpkts": inpkts,
            "outpkts": outpkts,
            "inbytes": inbytes,
            "outbytes": outbytes,
            **self.rates()._asdict(),
        }
