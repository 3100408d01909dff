"""Operations on checks and service policies, and the pure function that applies them.

As ``director.ctl.ops`` does for ipvsadm's commands: ``apply_health(config, op)``
validates and returns a new ``Config`` or raises ``ConfigError`` with one line, and
``prune`` drops the checks and policies of services and real servers that are gone
(deleting a real server deletes its check, as keepalived's config would).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Any, TypeAlias

from director.ctl.ops import CHOOSABLE_METHODS, canonical_addr, canonical_key, check_dest
from director.model.config import Config, ConfigError, DestConf, ServiceConf
from director.model.health import (
    CHECK_KINDS,
    ON_FAILURE,
    CheckConf,
    Health,
    ServiceKey,
    ServicePolicy,
)

MAX_SECONDS = 86400.0
MAX_COUNT = 1000

AddrPort: TypeAlias = tuple[str, int | None]


@dataclass(frozen=True, slots=True)
class AddCheck:
    service: ServiceKey
    dest: AddrPort | None
    settings: tuple[tuple[str, Any], ...] = ()  # CheckConf fields given


@dataclass(frozen=True, slots=True)
class EditCheck:
    service: ServiceKey
    dest: AddrPort | None
    settings: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class DeleteCheck:
    service: ServiceKey
    dest: AddrPort | None


@dataclass(frozen=True, slots=True)
class SetPolicy:
    """Replace a service's policy (sorry server, quorum); no settings: remove it."""

    service: ServiceKey
    settings: tuple[tuple[str, Any], ...] = ()


HealthOp: TypeAlias = AddCheck | EditCheck | DeleteCheck | SetPolicy
HEALTH_OPS = (AddCheck, EditCheck, DeleteCheck, SetPolicy)
CHECK_FIELDS = frozenset(f.name for f in fields(CheckConf)) - {"service", "dest"}
POLICY_FIELDS = frozenset(f.name for f in fields(ServicePolicy)) - {"service"}


def _service(config: Config, key: ServiceKey) -> ServiceConf:
    wanted = canonical_key(key)
    for svc in config.services:
        if svc.key == wanted:
            return svc
    raise ConfigError("Service not defined")


def _dest(svc: ServiceConf, where: AddrPort) -> tuple[str, int]:
    """The real server ``-r ADDR[:PORT]`` names (without a port: the only one there)."""
    addr = canonical_addr(where[0], "real server address")
    found = [d for d in svc.dests if d.addr == addr and where[1] in (None, d.port)]
    if not found and svc.protocol != "fwm":
        # -r RIP:PORT of a DR/TUN server names it by the service port, as ipvsadm does.
        found = [d for d in svc.dests if d.addr == addr and d.method in ("droute", "tunnel")]
    if len(found) != 1:
        raise ConfigError("No such destination" if not found else "give the real server's port")
    return found[0].key


def _check_number(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"check {name.replace('_', '-')} must be in {low:g}..{high:g}")


def validate_check(svc: ServiceConf, check: CheckConf) -> CheckConf:
    """Refuse what cannot run, with one line that says why."""
    if check.kind not in CHECK_KINDS:
        raise ConfigError(f"unknown check type {check.kind!r} (one of {', '.join(CHECK_KINDS)})")
    if check.on_failure not in ON_FAILURE:
        raise ConfigError(f"--on-failure must be one of {', '.join(ON_FAILURE)}")
    _check_number("interval", check.interval, 0.1, MAX_SECONDS)
    _check_number("timeout", check.timeout, 0.05, MAX_SECONDS)
    _check_number("retry_delay", check.retry_delay, 0.0, MAX_SECONDS)
    _check_number("warmup", check.warmup, 0.0, MAX_SECONDS)
    _check_number("rise", check.rise, 1, MAX_COUNT)
    _check_number("fall", check.fall, 1, MAX_COUNT)
    _check_number("retry", check.retry, 0, MAX_COUNT)
    _check_number("port", check.port, 0, 65535)
    for status in check.status:
        _check_number("status", status, 100, 599)
    if check.digest and not re.fullmatch(r"[0-9a-f]{32}", check.digest):
        raise ConfigError("check digest must be 32 hex digits (an MD5, as genhash prints)")
    if check.kind == "misc" and not check.command.strip():
        raise ConfigError("a misc check needs --command")
    if check.kind in ("http", "https") and not check.path.startswith("/"):
        raise ConfigError("check path must start with /")
    if check.kind != "misc" and not check.port:
        ports = [d.port for d in svc.dests if check.dest in (None, d.key)]
        if check.dest is not None and 0 in ports:
            raise ConfigError("the real server has no port: give the check --port")
    if check.via_vip:
        if svc.protocol != "tcp":  # IPv4 or IPv6: the probe speaks both
            raise ConfigError("--via-vip needs a TCP service (a VIP and a port)")
        for dest in svc.dests:
            if check.dest == dest.key and dest.method not in ("droute", "tunnel"):
                raise ConfigError("--via-vip is for direct-routing and tunnelled real servers")
    return check


def _check_index(health: Health, service: ServiceKey, dest: tuple[str, int] | None) -> int:
    for index, check in enumerate(health.checks):
        if check.service == service and check.dest == dest:
            return index
    return -1


def _with_checks(config: Config, checks: tuple[CheckConf, ...]) -> Config:
    return replace(config, health=replace(config.health, checks=checks))


def _settings(settings: tuple[tuple[str, Any], ...], allowed: frozenset[str]) -> dict[str, Any]:
    values = dict(settings)
    unknown = set(values) - allowed
    if unknown:
        raise ConfigError(f"unknown setting {sorted(unknown)[0]!r}")
    return values


def _add_check(config: Config, op: AddCheck) -> Config:
    svc = _service(config, op.service)
    dest = None if op.dest is None else _dest(svc, op.dest)
    if _check_index(config.health, svc.key, dest) >= 0:
        raise ConfigError("Check already exists")
    values = _settings(op.settings, CHECK_FIELDS)
    check = validate_check(svc, CheckConf(service=svc.key, dest=dest, **values))
    return _with_checks(config, (*config.health.checks, check))


def _edit_check(config: Config, op: EditCheck) -> Config:
    svc = _service(config, op.service)
    dest = None if op.dest is None else _dest(svc, op.dest)
    index = _check_index(config.health, svc.key, dest)
    if index < 0:
        raise ConfigError("No such check")
    values = _settings(op.settings, CHECK_FIELDS)
    check = validate_check(svc, replace(config.health.checks[index], **values))
    checks = list(config.health.checks)
    checks[index] = check
    return _with_checks(config, tuple(checks))


def _delete_check(config: Config, op: DeleteCheck) -> Config:
    svc = _service(config, op.service)
    dest = None if op.dest is None else _dest(svc, op.dest)
    index = _check_index(config.health, svc.key, dest)
    if index < 0:
        raise ConfigError("No such check")
    checks = config.health.checks
    return _with_checks(config, checks[:index] + checks[index + 1 :])


def _set_policy(config: Config, op: SetPolicy) -> Config:
    svc = _service(config, op.service)
    others = tuple(p for p in config.health.policies if p.service != svc.key)
    if op.settings:
        values = _settings(op.settings, POLICY_FIELDS)
        policy = ServicePolicy(service=svc.key, **values)
        _check_number("quorum", policy.quorum, 0, 2**31 - 1)
        _check_number("hysteresis", policy.hysteresis, 0, 2**31 - 1)
        if policy.sorry_method not in CHOOSABLE_METHODS:
            raise ConfigError(f"invalid sorry server method {policy.sorry_method!r}")
        if policy.sorry is not None:
            sorry = check_dest(
                svc, DestConf(policy.sorry[0], policy.sorry[1], method=policy.sorry_method)
            )
            policy = replace(policy, sorry=sorry.key)
        others = (*others, policy)
    return replace(config, health=replace(config.health, policies=others))


def apply_health(config: Config, op: HealthOp) -> Config:
    """``config`` changed by ``op``, or ConfigError and nothing changed."""
    match op:
        case AddCheck():
            return _add_check(config, op)
        case EditCheck():
            return _edit_check(config, op)
        case DeleteCheck():
            return _delete_check(config, op)
        case SetPolicy():
            return _set_policy(config, op)
    raise ConfigError(f"unknown operation {type(op).__name__}")


def prune(config: Config) -> Config:
    """Drop the checks and policies whose service or real server no longer exists."""
    services = {svc.key: {d.key for d in svc.dests} for svc in config.services}
    checks = tuple(
        c
        for c in config.health.checks
        if c.service in services and (c.dest is None or c.dest in services[c.service])
    )
    policies = tuple(p for p in config.health.policies if p.service in services)
    if checks == config.health.checks and policies == config.health.policies:
        return config
    return replace(config, health=Health(checks=checks, policies=policies))
