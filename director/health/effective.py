"""Health as an overlay on the operator's intent: the table the core is given.

``effective(config, healthy, quorum)`` is pure.  The rules file keeps ``config``;
the core runs ``effective(...)``, recomputed whenever the intent or the health
changes, so health never leaks into what is saved:

* a real server whose check says down is quiesced (weight 0: its connections go on,
  no new ones come; keepalived's ``inhibit_on_failure``) or removed, as its check says;
* a service whose quorum is lost (the weights of its healthy real servers add up to
  less than ``quorum``, keepalived's rule, with its hysteresis) gets its sorry server.

``quorum_states`` is the quorum half, pure as well: it needs the previous states for
the hysteresis.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from director.model.config import Config, DestConf, ServiceConf
from director.model.health import DestKey, ServiceKey

Healthy = Mapping[tuple[ServiceKey, DestKey], bool]  # absent: healthy (not checked yet)


def _healthy_weight(svc: ServiceConf, config: Config, healthy: Healthy) -> int:
    total = 0
    for dest in svc.dests:
        if config.health.check_for(svc.key, dest.key) is None or healthy.get(
            (svc.key, dest.key), True
        ):
            total += dest.weight
    return total


def quorum_states(
    config: Config, healthy: Healthy, previous: Mapping[ServiceKey, bool]
) -> dict[ServiceKey, bool]:
    """Whether each service with a policy has its quorum: lost below
    ``quorum - hysteresis``, gained again at ``quorum + hysteresis``."""
    states: dict[ServiceKey, bool] = {}
    for svc in config.services:
        policy = config.health.policy(svc.key)
        if policy is None:
            continue
        weight = _healthy_weight(svc, config, healthy)
        if previous.get(svc.key, True):
            states[svc.key] = weight >= policy.quorum - policy.hysteresis
        else:
            states[svc.key] = weight >= policy.quorum + policy.hysteresis
    return states


def _effective_service(
    svc: ServiceConf, config: Config, healthy: Healthy, quorum: Mapping[ServiceKey, bool]
) -> ServiceConf:
    dests: list[DestConf] = []
    for dest in svc.dests:
        check = config.health.check_for(svc.key, dest.key)
        if check is None or healthy.get((svc.key, dest.key), True):
            dests.append(dest)
        elif check.on_failure == "quiesce":
            dests.append(replace(dest, weight=0))
    policy = config.health.policy(svc.key)
    if policy is not None and policy.sorry is not None and not quorum.get(svc.key, True):
        addr, port = policy.sorry
        if all(d.key != policy.sorry for d in dests):
            dests.append(DestConf(addr=addr, port=port, method=policy.sorry_method, weight=1))
    return replace(svc, dests=tuple(dests))


def effective(
    config: Config, healthy: Healthy, quorum: Mapping[ServiceKey, bool] | None = None
) -> Config:
    """The table to run: ``config`` with failed real servers quiesced or removed and
    sorry servers in where the quorum is lost (``quorum`` None: computed afresh)."""
    if not config.health.checks and not config.health.policies:
        return config
    if quorum is None:
        quorum = quorum_states(config, healthy, {})
    services = tuple(_effective_service(s, config, healthy, quorum) for s in config.services)
    return replace(config, services=services)
