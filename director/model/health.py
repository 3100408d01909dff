"""What an operator asks of health checking: checks per real server, policies per service.

Plain immutable data, kept in ``Config.health`` beside the virtual services, persisted
in the rules file as ``# director-check`` and ``# director-health`` lines
(``director.ctl.health_rules``) and validated by ``director.ctl.health_ops``.

The knobs are keepalived's (``delay_loop``, ``connect_timeout``, ``retry``,
``delay_before_retry``, ``warmup``, ``inhibit_on_failure``, ``sorry_server``,
``quorum``, ``hysteresis``, ``quorum_up``/``quorum_down``), with rise and fall counts
on top, as most balancers have them.
"""

from __future__ import annotations

from dataclasses import dataclass

ServiceKey = tuple[str, str, int]  # ServiceConf.key
DestKey = tuple[str, int]  # DestConf.key

CHECK_KINDS: tuple[str, ...] = ("tcp", "http", "https", "misc")
ON_FAILURE: tuple[str, ...] = ("quiesce", "remove")

DEFAULT_INTERVAL = 5.0
DEFAULT_TIMEOUT = 3.0
DEFAULT_STATUS: tuple[int, ...] = ()  # empty: any 2xx, as keepalived without status_code


@dataclass(frozen=True, slots=True)
class CheckConf:
    """One check of one real server, or the default for every server of a service
    (``dest`` None).  A real server's own check replaces the service's default."""

    service: ServiceKey
    dest: DestKey | None = None
    kind: str = "tcp"
    port: int = 0  # 0: the real server's port (the service port for fwmark: none)
    path: str = "/"  # http/https: url path
    status: tuple[int, ...] = DEFAULT_STATUS
    digest: str = ""  # md5 hex of the body, keepalived's genhash
    contains: str = ""  # a substring the body must hold
    host: str = ""  # http Host header (keepalived's virtualhost); default the address
    command: str = ""  # misc: the command, split as a shell would (no shell runs it)
    interval: float = DEFAULT_INTERVAL  # delay_loop
    timeout: float = DEFAULT_TIMEOUT  # connect_timeout, and the whole check's budget
    rise: int = 1  # successes in a row to come back
    fall: int = 1  # failed checks in a row to fail
    retry: int = 0  # retries within one check before it counts as failed
    retry_delay: float = 1.0  # delay_before_retry
    warmup: float = 0.0  # first check after a random delay in [0, warmup]
    via_vip: bool = False  # DR/TUN: also probe VIP:port through the real server's path
    on_failure: str = "quiesce"  # quiesce (weight 0, inhibit_on_failure) or remove


@dataclass(frozen=True, slots=True)
class ServicePolicy:
    """What a service does when its real servers fail (keepalived's virtual_server
    settings): the sorry server and the quorum with its commands."""

    service: ServiceKey
    sorry: DestKey | None = None
    sorry_method: str = "masq"
    quorum: int = 1  # sum of the weights of healthy real servers needed
    hysteresis: int = 0
    quorum_up: str = ""  # command run when the quorum is gained
    quorum_down: str = ""  # command run when it is lost


@dataclass(frozen=True, slots=True)
class Health:
    checks: tuple[CheckConf, ...] = ()
    policies: tuple[ServicePolicy, ...] = ()

    def policy(self, service: ServiceKey) -> ServicePolicy | None:
        for policy in self.policies:
            if policy.service == service:
                return policy
        return None

    def check_for(self, service: ServiceKey, dest: DestKey) -> CheckConf | None:
        """The check that applies to a real server: its own, else its service's."""
        default = None
        for check in self.checks:
            if check.service != service:
                continue
            if check.dest == dest:
                return check
            if check.dest is None:
                default = check
        return default
