"""Scheduler registry, mirroring ``ip_vs_sched.c``.

A scheduler is a small class registered by its unique name.  ``schedule`` picks a real
server for a new connection from ``svc.dests`` (newest first, as the kernel walks
``svc->destinations``) or returns None; ``now`` (seconds, monotonic) stands in for
jiffies where a scheduler keeps time (lblc, lblcr); ``update`` is called after real servers were
added, removed or edited (the kernel's add_dest/del_dest/upd_dest hooks, folded into one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from director.core.packet import Packet
    from director.core.service import Dest, Service
    from director.core.sysctl import Sysctls


class Scheduler:
    name: ClassVar[str]

    def schedule(self, svc: Service, pkt: Packet, now: float = 0.0) -> Dest | None:
        raise NotImplementedError

    def update(self, svc: Service) -> None:
        """Real servers of ``svc`` changed; rebuild any derived state."""

    def tune(self, sysctls: Sysctls) -> None:
        """The IPVS sysctls changed (or the scheduler is new): read the ones it uses
        (lblc_expiration, lblcr_expiration)."""


def usable(dest: Dest) -> bool:
    """A server a new connection may go to: neither overloaded (IP_VS_DEST_F_OVERLOAD)
    nor quiesced (weight 0), the test every kernel scheduler makes first."""
    return not dest.overloaded and dest.weight > 0


SCHEDULERS: dict[str, type[Scheduler]] = {}


def register(cls: type[Scheduler]) -> type[Scheduler]:
    """Class decorator: make a scheduler available by its ``name`` (register_ip_vs_scheduler)."""
    if cls.name in SCHEDULERS:
        raise ValueError(f"scheduler {cls.name} registered twice")
    SCHEDULERS[cls.name] = cls
    return cls


def create_scheduler(name: str) -> Scheduler:
    _load_all()
    return SCHEDULERS[name]()


def scheduler_names() -> list[str]:
    _load_all()
    return sorted(SCHEDULERS)


def _load_all() -> None:
    # Importing a scheduler module registers it; the list is the package's contents.
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
