"""Checks and policies as words: the ``dirctl add-check ...`` options and the comment
lines that keep them in the rules file.

In the rules file they follow the ipvsadm-save lines of their service, as comments
that ``ipvsadm-restore`` skips, so the file stays one ipvsadm users can load::

    -A -t 203.0.113.5:80 -s rr
    -a -t 203.0.113.5:80 -r 198.18.0.2:80 -m -w 1
    # director-check -t 203.0.113.5:80 -r 198.18.0.2:80 --type http --status 200 --fall 2
    # director-health -t 203.0.113.5:80 --sorry-server 198.18.0.9:80 -m

director reads them back all or nothing, like every other line of the file.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from typing import Any

from director.ctl.health_ops import (
    AddCheck,
    AddrPort,
    DeleteCheck,
    EditCheck,
    HealthOp,
    SetPolicy,
)
from director.ctl.ipvsadm import parse_addr_port, parse_service_key
from director.model.config import Config, ConfigError
from director.model.health import CheckConf, ServiceKey, ServicePolicy

CHECK_PREFIX = "# director-check "
HEALTH_PREFIX = "# director-health "


def _number(kind: Callable[[str], Any]) -> Callable[[str, str], Any]:
    def convert(text: str, option: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise ConfigError(f"{option}: not a number: {text!r}") from None

    return convert


def _text(text: str, option: str) -> str:
    return text


def _statuses(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"{option}: want status codes like 200 or 200,301") from None


def _addr(text: str, option: str) -> tuple[str, int]:
    addr, port = parse_addr_port(text, f"{option}: want ADDR[:PORT], not {text!r}")
    return (addr, port or 0)


# option -> (field, converter); None converter: a flag
CHECK_OPTIONS: dict[str, tuple[str, Callable[[str, str], Any] | None]] = {
    "--type": ("kind", _text),
    "--port": ("port", _number(int)),
    "--path": ("path", _text),
    "--status": ("status", _statuses),
    "--digest": ("digest", lambda text, option: text.lower()),
    "--contains": ("contains", _text),
    "--host": ("host", _text),
    "--command": ("command", _text),
    "--interval": ("interval", _number(float)),
    "--timeout": ("timeout", _number(float)),
    "--rise": ("rise", _number(int)),
    "--fall": ("fall", _number(int)),
    "--retry": ("retry", _number(int)),
    "--retry-delay": ("retry_delay", _number(float)),
    "--warmup": ("warmup", _number(float)),
    "--via-vip": ("via_vip", None),
    "--on-failure": ("on_failure", _text),
}
POLICY_OPTIONS: dict[str, tuple[str, Callable[[str, str], Any] | None]] = {
    "--sorry-server": ("sorry", _addr),
    "--quorum": ("quorum", _number(int)),
    "--hysteresis": ("hysteresis", _number(int)),
    "--quorum-up": ("quorum_up", _text),
    "--quorum-down": ("quorum_down", _text),
}
SORRY_METHODS = {"-g": "droute", "-i": "tunnel", "-m": "masq"}
SERVICE_SWITCHES = {"-t": "tcp", "-u": "udp", "-f": "fwm"}
VERBS = ("add-check", "edit-check", "delete-check", "set-health")


def parse_words(verb: str, words: Sequence[str]) -> HealthOp:
    """One ``dirctl VERB WORDS...`` (or rules-file line) as an operation."""
    if verb not in VERBS:
        raise ConfigError(f"unknown command {verb!r}")
    options = POLICY_OPTIONS if verb == "set-health" else CHECK_OPTIONS
    service: ServiceKey | None = None
    dest: AddrPort | None = None
    settings: dict[str, Any] = {}
    index = 0
    while index < len(words):
        word, _, attached = words[index].partition("=")
        has_value = "=" in words[index]
        index += 1
        if word in ("-6", "--ipv6") and not has_value:  # ipvsadm's -f MARK -6
            if service is None or service[0] != "fwm" or service[1]:
                raise ConfigError("-6 used before -f")
            service = parse_service_key("fwm", str(service[2]), ipv6=True)
            continue
        if word in SORRY_METHODS and verb == "set-health" and not has_value:
            _once(settings, "sorry_method", SORRY_METHODS[word], "-g/-i/-m")
            continue
        spec = options.get(word)
        if spec is not None and spec[1] is None and not has_value:
            _once(settings, spec[0], True, word)
            continue
        if word not in SERVICE_SWITCHES and word not in ("-r", "--real-server") and spec is None:
            raise ConfigError(f"{verb}: unknown option {word!r}")
        if not has_value:
            if index >= len(words):
                raise ConfigError(f"{verb}: option {word} needs a value")
            attached = words[index]
            index += 1
        if word in SERVICE_SWITCHES:
            if service is not None:
                raise ConfigError(f"{verb}: give one service")
            service = parse_service_key(SERVICE_SWITCHES[word], attached)
        elif word in ("-r", "--real-server"):
            if dest is not None or verb == "set-health":
                raise ConfigError(f"{verb}: -r given twice" if dest else "set-health takes no -r")
            dest = parse_addr_port(attached, f"illegal real server address {attached!r}")
        elif spec is not None and spec[1] is not None:
            _once(settings, spec[0], spec[1](attached, word), word)
    if service is None:
        raise ConfigError(f"{verb}: give the service (-t, -u or -f)")
    given = tuple(sorted(settings.items()))
    if verb == "add-check":
        return AddCheck(service, dest, given)
    if verb == "edit-check":
        return EditCheck(service, dest, given)
    if verb == "delete-check":
        if given:
            raise ConfigError("delete-check takes only the service and -r")
        return DeleteCheck(service, dest)
    return SetPolicy(service, given)


def _once(settings: dict[str, Any], name: str, value: Any, option: str) -> None:
    if name in settings:
        raise ConfigError(f"option {option} given twice")
    settings[name] = value


def parse_comment(line: str) -> HealthOp | None:
    """The operation of a ``# director-check`` / ``# director-health`` line; None for
    any other comment."""
    stripped = line.strip()
    for prefix, verb in ((CHECK_PREFIX, "add-check"), (HEALTH_PREFIX, "set-health")):
        if stripped.startswith(prefix.strip() + " ") or stripped == prefix.strip():
            try:
                words = shlex.split(stripped[len(prefix.strip()) :])
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            return parse_words(verb, words)
    return None


# --- formatting ---------------------------------------------------------------------


def _addr_port(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def service_words(key: ServiceKey) -> list[str]:
    proto, addr, port = key
    if proto == "fwm":
        return ["-f", str(port), "-6"] if addr else ["-f", str(port)]
    return [{"tcp": "-t", "udp": "-u"}[proto], _addr_port(addr, port)]


def _format_value(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def check_words(check: CheckConf) -> list[str]:
    """The options that rebuild ``check`` (only those that differ from the defaults)."""
    words = service_words(check.service)
    if check.dest is not None:
        words += ["-r", _addr_port(*check.dest)]
    default = CheckConf(service=check.service)
    for option, (name, convert) in CHECK_OPTIONS.items():
        value = getattr(check, name)
        if value == getattr(default, name) and name != "kind":
            continue
        words += [option] if convert is None else [option, _format_value(value)]
    return words


def policy_words(policy: ServicePolicy) -> list[str]:
    words = service_words(policy.service)
    default = ServicePolicy(service=policy.service)
    if policy.sorry is not None:
        words += ["--sorry-server", _addr_port(*policy.sorry)]
        words.append({v: k for k, v in SORRY_METHODS.items()}[policy.sorry_method])
    for option, (name, _) in POLICY_OPTIONS.items():
        value = getattr(policy, name)
        if name != "sorry" and value != getattr(default, name):
            words += [option, _format_value(value)]
    if len(words) == 2:  # all defaults: still a policy (quorum 1, no sorry server)
        words += ["--quorum", str(policy.quorum)]
    return words


def _join(words: list[str]) -> str:
    return " ".join(shlex.quote(w) for w in words)


def comment_lines(config: Config, service: ServiceKey) -> list[str]:
    """The ``# director-...`` lines of one service, to follow its ipvsadm-save lines."""
    lines = [f"{CHECK_PREFIX}{_join(check_words(c))}" for c in config.health.checks
             if c.service == service]  # fmt: skip
    policy = config.health.policy(service)
    if policy is not None:
        lines.append(f"{HEALTH_PREFIX}{_join(policy_words(policy))}")
    return lines
