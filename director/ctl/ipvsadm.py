"""ipvsadm's language: its option letters, its save format, its restore files.

One set of helpers turns option values, as an operator typed them, into operations
(``RawArgs`` -> ``build_op``); both ``dirctl`` and the ipvsadm line parser use it, so
``-p`` with no value (360 s), ``-M``, ``-b``, ``-g/-i/-m`` and ``ADDR[:PORT]`` mean the
same everywhere and fail with the same words as ipvsadm's ``fail(2, ...)``.

``format_save`` prints what ``ipvsadm-save -n`` (ipvsadm 1.31) prints, with three
documented differences that make the daemon's rules file reproduce its configuration
exactly (``load_rules(format_save(c)) == c``):

* services and real servers come in configuration order, not sorted: real servers
  oldest first, so a restore rebuilds the kernel's newest-first list, and scheduling
  order, unchanged (ipvsadm sorts by address, which loses it);
* ``-x``/``-y`` follow ``-w`` when a threshold is set (ipvsadm-save drops thresholds);
* a ``--set TCP TCPFIN UDP`` line comes first when the timeouts differ from the
  defaults (ipvsadm-save never saves timeouts).

Every such line is still one ``ipvsadm -R`` accepts.  Host and service names are not
resolved: addresses and ports are numeric, as in ``-n`` output.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from director.ctl.listing import tunnel_rule
from director.ctl.ops import (
    MAX_FWMARK,
    MAX_THRESHOLD,
    MAX_TIMEOUT,
    AddServer,
    AddService,
    Clear,
    DeleteServer,
    DeleteService,
    EditServer,
    EditService,
    Op,
    ServiceKey,
    SetTimeout,
    apply,
    check_dest,
    check_service,
    default_netmask,
)
from director.model.config import (
    DEFAULT_PERSISTENCE,
    DEFAULT_SCHEDULER,
    DEFAULT_TUN_FLAGS,
    DEFAULT_TUN_TYPE,
    FWM6_ADDR,
    MAX_WEIGHT,
    TUN_TYPES,
    Config,
    ConfigError,
    DestConf,
    ServiceConf,
    Timeouts,
)

if TYPE_CHECKING:
    from director.ctl.health_ops import HealthOp

# -g -i -m, and the switch ipvsadm-save prints for each method (fwd_switch).
METHOD_LETTERS: dict[str, str] = {"g": "droute", "i": "tunnel", "m": "masq"}
METHOD_SWITCHES: dict[str, str] = {"droute": "-g", "tunnel": "-i", "masq": "-m", "local": "-g"}
SERVICE_SWITCHES: dict[str, str] = {"tcp": "-t", "udp": "-u", "fwm": "-f"}

BARE = ""  # the value recorded for an option given without its optional value (-p)


@dataclass
class RawArgs:
    """Option values as typed, before any parsing; field names follow ipvsadm's options."""

    service: tuple[str, str] | None = None  # ("tcp" | "udp" | "fwm", text)
    scheduler: str | None = None
    persistent: str | None = None  # BARE for a bare -p
    netmask: str | None = None
    sched_flags: str | None = None
    ops: bool = False
    real_server: str | None = None
    method: str | None = None  # "g", "i" or "m"
    weight: str | None = None
    u_threshold: str | None = None
    l_threshold: str | None = None
    tun_type: str | None = None
    tun_port: str | None = None
    tun_nocsum: bool = False
    tun_csum: bool = False
    tun_remcsum: bool = False
    ipv6: bool = False  # -6: the -f service is an IPv6 one
    timeouts: tuple[str, ...] = field(default_factory=tuple)


# ipvsadm's optnames, used in its messages.
OPTNAMES: dict[str, str] = {
    "service": "service-address",
    "scheduler": "scheduler",
    "persistent": "persistent",
    "netmask": "netmask",
    "sched_flags": "sched-flags",
    "ops": "ops",
    "real_server": "real-server",
    "method": "forwarding-method",
    "weight": "weight",
    "u_threshold": "u-threshold",
    "l_threshold": "l-threshold",
    "tun_type": "tun-type",
    "tun_port": "tun-port",
    "tun_nocsum": "tun-nocsum",
    "tun_csum": "tun-csum",
    "tun_remcsum": "tun-remcsum",
}

_SERVICE_SETTINGS = frozenset({"scheduler", "persistent", "netmask", "sched_flags", "ops"})
# The tunnel options (ipvsadm's tunopts[], in its order) and the encapsulation flag
# each checksum option sets.
TUN_OPTIONS: tuple[str, ...] = ("tun_port", "tun_nocsum", "tun_csum", "tun_remcsum")
TUN_FLAG_OPTIONS: dict[str, str] = {
    "tun_nocsum": "nocsum",
    "tun_csum": "csum",
    "tun_remcsum": "remcsum",
}
# ipvsadm 1.31's tunnel_types_v_options over TUN_OPTIONS: '+' compulsory, 'x' illegal,
# '1' at most one of them.
TUNNEL_TYPES_V_OPTIONS: dict[str, str] = {"ipip": "xxxx", "gue": "+111", "gre": "x11x"}
_SERVER_SETTINGS = frozenset(
    {"method", "weight", "u_threshold", "l_threshold", "tun_type", *TUN_OPTIONS}
)
_NONE: frozenset[str] = frozenset()

# ipvsadm's commands_v_options table, reduced to what director supports:
# command -> (compulsory options, optional options); anything else is illegal.
COMMAND_OPTIONS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "add-service": (frozenset({"service"}), _SERVICE_SETTINGS),
    "edit-service": (frozenset({"service"}), _SERVICE_SETTINGS),
    "delete-service": (frozenset({"service"}), _NONE),
    "add-server": (frozenset({"service", "real_server"}), _SERVER_SETTINGS),
    "edit-server": (frozenset({"service", "real_server"}), _SERVER_SETTINGS),
    "delete-server": (frozenset({"service", "real_server"}), _NONE),
    "clear": (_NONE, _NONE),
    "set-timeout": (_NONE, _NONE),
}


# --- values -------------------------------------------------------------------------


def pick_one(name: str, candidates: Sequence[tuple[str, str | None]]) -> tuple[str, str] | None:
    """The one (kind, value) given among alternatives such as -t/-u/-f, or None."""
    given = [(kind, value) for kind, value in candidates if value is not None]
    if len(given) > 1:
        raise ConfigError(f"multiple '{name}' options specified")
    return given[0] if given else None


def parse_number(text: str, low: int, high: int, message: str) -> int:
    """ipvsadm's string_to_number: a whole decimal number within [low, high]."""
    digits = text[1:] if text[:1] in "+-" else text
    if not (digits.isascii() and digits.isdigit()):
        raise ConfigError(message)
    value = int(text)
    if not low <= value <= high:
        raise ConfigError(message)
    return value


def parse_addr_port(text: str, message: str) -> tuple[str, int | None]:
    """ipvsadm's parse_service: ``ADDR``, ``ADDR:PORT`` or ``[IPv6]:PORT``, numeric only."""
    if not text or text.isdigit():
        raise ConfigError(message)
    port_text: str | None = None
    if text.startswith("["):
        addr_text, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(message)
        port_text = rest[1:]
    elif text.count(":") > 1:
        addr_text = text  # a bare IPv6 address
    else:
        addr_text, sep, port_text = text.partition(":")
        port_text = port_text if sep else None
    try:
        addr = str(ipaddress.ip_address(addr_text))
    except ValueError:
        raise ConfigError(message) from None
    if port_text is None:
        return addr, None
    return addr, parse_number(port_text, 0, 65535, message)


def parse_service_key(kind: str, text: str, ipv6: bool = False) -> ServiceKey:
    """-t/-u ADDR[:PORT] or -f MARK [-6] to a ServiceConf.key; ``ipv6`` is ipvsadm's
    ``-6``, which only a firewall-mark service takes (the others have an address)."""
    if ipv6 and kind != "fwm":
        raise ConfigError("-6 used before -f")
    if kind == "fwm":
        mark = parse_number(text, 1, MAX_FWMARK, f"invalid fwmark value `{text}' specified")
        return ("fwm", FWM6_ADDR if ipv6 else "", mark)
    addr, port = parse_addr_port(text, "illegal virtual server address[:port] specified")
    return (kind, addr, port or 0)


def parse_persistent(text: str | None) -> int | None:
    """-p [SECONDS]: None when absent, DEFAULT_PERSISTENCE (360) when bare."""
    if text is None:
        return None
    if text == BARE:
        return DEFAULT_PERSISTENCE
    return parse_number(text, 1, MAX_TIMEOUT, f"invalid timeout value `{text}' specified")


def _optional_number(text: str | None, high: int, message: str) -> int | None:
    return None if text is None else parse_number(text, 0, high, message)


def parse_method(letter: str | None) -> str | None:
    if letter is None:
        return None
    if letter not in METHOD_LETTERS:
        raise ConfigError(f"invalid forwarding method `-{letter}'")
    return METHOD_LETTERS[letter]


def parse_tun_type(text: str | None) -> str | None:
    """--tun-type: ipip (the default), gue or gre (ipvsadm's parse_tun_type)."""
    if text is None or text in TUN_TYPES:
        return text
    raise ConfigError("illegal tunnel type specified")


def tunnel_opt_check(tun_type: str, given: Sequence[str]) -> None:
    """ipvsadm's tunnel_opt_check: the tunnel options ``given`` (RawArgs field names)
    against the tunnel type's row of TUNNEL_TYPES_V_OPTIONS, with ipvsadm's words."""
    last: str | None = None
    for name, rule in zip(TUN_OPTIONS, TUNNEL_TYPES_V_OPTIONS[tun_type], strict=True):
        if name not in given:
            if rule == "+":
                raise ConfigError(
                    f"You need to supply the '{OPTNAMES[name]}' option for the "
                    f"'{tun_type}' tunnel type"
                )
            continue
        if rule == "x":
            raise ConfigError(
                f"Illegal '{OPTNAMES[name]}' option with the '{tun_type}' tunnel type"
            )
        if rule == "1":
            if last is not None:
                raise ConfigError(
                    f"The option '{OPTNAMES[name]}' conflicts with the '{OPTNAMES[last]}' "
                    f"option in the '{tun_type}' tunnel type"
                )
            last = name


def _tun_given(raw: RawArgs) -> list[str]:
    return [name for name in TUN_OPTIONS if getattr(raw, name) not in (None, False)]


def parse_tunnel(raw: RawArgs) -> tuple[str | None, int | None, str | None]:
    """--tun-type, --tun-port and the checksum option as given (None where absent),
    checked as ipvsadm checks them: with --tun-type, its row of the table; without, a
    port or checksum option alone (dirctl edit-server changing the current tunnel)."""
    tun_type = parse_tun_type(raw.tun_type)
    given = _tun_given(raw)
    if tun_type is not None:
        tunnel_opt_check(tun_type, given)
    else:
        flags = [name for name in given if name in TUN_FLAG_OPTIONS]
        if len(flags) > 1:
            raise ConfigError(
                f"The option '{OPTNAMES[flags[1]]}' conflicts with the "
                f"'{OPTNAMES[flags[0]]}' option"
            )
    port = None
    if raw.tun_port is not None:
        port = parse_number(raw.tun_port, 1, 65535, "illegal tunnel port specified")
    flag = next((TUN_FLAG_OPTIONS[n] for n in given if n in TUN_FLAG_OPTIONS), None)
    return tun_type, port, flag


# --- options -> operation -----------------------------------------------------------


def _check_options(command: str, raw: RawArgs) -> None:
    """ipvsadm's generic_opt_check: compulsory and illegal options per command."""
    if command not in COMMAND_OPTIONS:
        raise ConfigError(f"unknown command '{command}'")
    required, optional = COMMAND_OPTIONS[command]
    for f in fields(raw):
        if f.name in ("timeouts", "ipv6"):
            continue
        given = getattr(raw, f.name) not in (None, False)
        if not given and f.name in required:
            raise ConfigError(
                f"You need to supply the '{OPTNAMES[f.name]}' option for the '{command}' command"
            )
        if given and f.name not in required | optional:
            raise ConfigError(f"Illegal '{OPTNAMES[f.name]}' option with the '{command}' command")
    # Tunnel options only with -i; dirctl edit-server without a method keeps the current
    # one, which ops.check_dest then holds them against.
    method = raw.method or ("i" if command == "edit-server" else "g")
    if (raw.tun_type is not None or _tun_given(raw)) and method != "i":
        raise ConfigError("Tunnel options conflict with forward method")
    if raw.ipv6 and (raw.service is None or raw.service[0] != "fwm"):
        raise ConfigError("-6 used before -f")


def _service_conf(key: ServiceKey, raw: RawArgs) -> ServiceConf:
    proto, addr, port = key
    scheduler = raw.scheduler or DEFAULT_SCHEDULER
    family = ipaddress.ip_address(addr).version if addr else 4
    flags = tuple(raw.sched_flags.split(",")) if raw.sched_flags else ()
    svc = ServiceConf(
        protocol=proto,
        addr=addr,
        port=port if proto != "fwm" else 0,
        fwmark=port if proto == "fwm" else 0,
        scheduler=scheduler,
        persistent=parse_persistent(raw.persistent),
        netmask=raw.netmask if raw.netmask is not None else default_netmask(family),
        sched_flags=flags,
        ops=raw.ops,
    )
    check_service(svc)  # fail early, with the daemon's own checks
    return svc


def _stub_service(key: ServiceKey) -> ServiceConf:
    """Enough of a service to check a real server against it before asking the daemon."""
    proto, addr, port = key
    if proto == "fwm":
        return ServiceConf(protocol="fwm", addr=addr, fwmark=port)
    return ServiceConf(protocol=proto, addr=addr, port=port)


def _server(key: ServiceKey, raw: RawArgs) -> tuple[str, int]:
    """-r ADDR[:PORT]; without a port the service port is used (ipvsadm copies vport)."""
    assert raw.real_server is not None
    addr, port = parse_addr_port(raw.real_server, "illegal real server address[:port] specified")
    if port is None:
        port = 0 if key[0] == "fwm" else key[2]
    return addr, port


def build_op(command: str, raw: RawArgs) -> Op:
    """Turn a command and its raw options into an operation, as ipvsadm's
    process_options does; ConfigError carries ipvsadm's message."""
    _check_options(command, raw)
    if command == "clear":
        return Clear()
    if command == "set-timeout":
        if len(raw.timeouts) != 3:
            raise ConfigError("--set option requires 3 timeout values")
        tcp, tcpfin, udp = (
            parse_number(t, 0, MAX_TIMEOUT, f"invalid timeout value `{t}' specified: "
                         f"a non-negative number of seconds, at most {MAX_TIMEOUT} "
                         "(0 keeps the current one)")
            for t in raw.timeouts
        )  # fmt: skip
        return SetTimeout(tcp=tcp, tcpfin=tcpfin, udp=udp)
    assert raw.service is not None
    key = parse_service_key(*raw.service, ipv6=raw.ipv6)
    builders: dict[str, Callable[[], Op]] = {
        "add-service": lambda: AddService(_service_conf(key, raw)),
        "edit-service": lambda: EditService(_service_conf(key, raw)),
        "delete-service": lambda: DeleteService(key),
        "add-server": lambda: _add_server(key, raw),
        "edit-server": lambda: _edit_server(key, raw),
        "delete-server": lambda: DeleteServer(key, *_server(key, raw)),
    }
    return builders[command]()


def _add_server(key: ServiceKey, raw: RawArgs) -> AddServer:
    tun_type, tun_port, tun_flags = parse_tunnel(raw)
    addr, port = _server(key, raw)
    weight, upper, lower = _dest_numbers(raw)
    dest = DestConf(
        addr=addr,
        port=port,
        method=parse_method(raw.method) or "droute",  # -g is ipvsadm's default
        weight=1 if weight is None else weight,
        u_threshold=upper or 0,
        l_threshold=lower or 0,
        tun_type=tun_type or DEFAULT_TUN_TYPE,
        tun_port=tun_port or 0,
        tun_flags=tun_flags or DEFAULT_TUN_FLAGS,
    )
    check_dest(_stub_service(key), dest)
    return AddServer(key, dest)


def _edit_server(key: ServiceKey, raw: RawArgs) -> EditServer:
    tun_type, tun_port, tun_flags = parse_tunnel(raw)
    addr, port = _server(key, raw)
    weight, upper, lower = _dest_numbers(raw)
    method = parse_method(raw.method)
    return EditServer(key, addr, port, method, weight, upper, lower, tun_type, tun_port, tun_flags)


def _dest_numbers(raw: RawArgs) -> tuple[int | None, int | None, int | None]:
    """-w, -x, -y as given (None when absent)."""
    return (
        _optional_number(raw.weight, MAX_WEIGHT, "illegal weight specified"),
        _optional_number(raw.u_threshold, MAX_THRESHOLD, "illegal u_threshold specified"),
        _optional_number(raw.l_threshold, MAX_THRESHOLD, "illegal l_threshold specified"),
    )


# --- one ipvsadm command line -------------------------------------------------------

COMMAND_SPELLINGS: dict[str, str] = {
    "-A": "add-service",
    "--add-service": "add-service",
    "-E": "edit-service",
    "--edit-service": "edit-service",
    "-D": "delete-service",
    "--delete-service": "delete-service",
    "-a": "add-server",
    "--add-server": "add-server",
    "-e": "edit-server",
    "--edit-server": "edit-server",
    "-d": "delete-server",
    "--delete-server": "delete-server",
    "-C": "clear",
    "--clear": "clear",
    "--set": "set-timeout",
}

# Options that take a value: spelling -> RawArgs field (service options also give a kind).
VALUE_SPELLINGS: dict[str, str] = {
    "-t": "service:tcp",
    "--tcp-service": "service:tcp",
    "-u": "service:udp",
    "--udp-service": "service:udp",
    "-f": "service:fwm",
    "--fwmark-service": "service:fwm",
    "-s": "scheduler",
    "--scheduler": "scheduler",
    "-p": "persistent",
    "--persistent": "persistent",
    "-M": "netmask",
    "--netmask": "netmask",
    "-b": "sched_flags",
    "--sched-flags": "sched_flags",
    "-r": "real_server",
    "--real-server": "real_server",
    "-w": "weight",
    "--weight": "weight",
    "-x": "u_threshold",
    "--u-threshold": "u_threshold",
    "-y": "l_threshold",
    "--l-threshold": "l_threshold",
    "--tun-type": "tun_type",
    "--tun-port": "tun_port",
}

# Options without a value: spelling -> (RawArgs field, value it sets).
FLAG_SPELLINGS: dict[str, tuple[str, str | bool]] = {
    "-g": ("method", "g"),
    "--gatewaying": ("method", "g"),
    "-i": ("method", "i"),
    "--ipip": ("method", "i"),
    "-m": ("method", "m"),
    "--masquerading": ("method", "m"),
    "-6": ("ipv6", True),
    "--ipv6": ("ipv6", True),
    "--tun-nocsum": ("tun_nocsum", True),
    "--tun-csum": ("tun_csum", True),
    "--tun-remcsum": ("tun_remcsum", True),
    "-o": ("ops", True),
    "--ops": ("ops", True),
    "ops": ("ops", True),  # ipvsadm before 1.27 saved one-packet scheduling as a bare word
}

OPTIONAL_VALUE = frozenset({"-p", "--persistent"})


def expand_bare_options(argv: Sequence[str]) -> list[str]:
    """popt's optional argument, as ipvsadm uses it for -p: the next word is the value
    unless there is none or it starts with '-'; a bare option gets the value BARE."""
    out: list[str] = []
    for index, word in enumerate(argv):
        out.append(word)
        if word in OPTIONAL_VALUE:
            following = argv[index + 1] if index + 1 < len(argv) else None
            if following is None or following.startswith("-"):
                out.append(BARE)
    return out


def _split_attached(word: str) -> tuple[str, str | None]:
    """``--opt=value`` and ``-xVALUE`` to (option, value)."""
    if word.startswith("--") and "=" in word:
        name, _, value = word.partition("=")
        return name, value
    if not word.startswith("--") and len(word) > 2 and word[:2] in VALUE_SPELLINGS:
        return word[:2], word[2:]
    return word, None


def parse_args(argv: Sequence[str]) -> Op:
    """One ipvsadm command (its arguments, with or without a leading ``ipvsadm``)."""
    words = list(argv)
    if words and words[0].rsplit("/", 1)[-1] == "ipvsadm":
        words = words[1:]
    words = expand_bare_options(words)
    command: str | None = None
    values: dict[str, Any] = {}
    positional: list[str] = []
    index = 0
    while index < len(words):
        word, attached = _split_attached(words[index])
        index += 1
        if word in COMMAND_SPELLINGS:
            if command is not None:
                raise ConfigError("multiple commands specified")
            command = COMMAND_SPELLINGS[word]
            continue
        if word in VALUE_SPELLINGS:
            if attached is None:
                if index >= len(words):
                    raise ConfigError(f"option `{word}' requires an argument")
                attached = words[index]
                index += 1
            target, _, kind = VALUE_SPELLINGS[word].partition(":")
            _record(values, target, (kind, attached) if kind else attached)
            continue
        if word in FLAG_SPELLINGS and attached is None:
            target, flag = FLAG_SPELLINGS[word]
            if target == "ipv6" and values.get("service", ("",))[0] != "fwm":
                raise ConfigError("-6 used before -f")  # ipvsadm: -6 modifies a given -f
            _record(values, target, flag)
            continue
        if word.startswith("-") and word != "-":
            raise ConfigError(f"invalid option `{word}'")
        positional.append(word)
    if command is None:
        raise ConfigError("no command given")
    if command == "set-timeout":
        values["timeouts"] = tuple(positional[:3])
        positional = positional[3:]
    if positional:
        raise ConfigError(f"unexpected argument {positional[0]}")
    return build_op(command, RawArgs(**values))


def _record(values: dict[str, Any], target: str, value: object) -> None:
    if target in values:
        raise ConfigError(f"multiple '{OPTNAMES[target]}' options specified")
    values[target] = value


def parse_line(line: str) -> Op:
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return parse_args(words)


# --- restore files ------------------------------------------------------------------


def parse_restore_lines(text: str) -> list[tuple[int, Op | HealthOp]]:
    """Every command of an ipvsadm-save file with its line number; blank lines and
    ``#`` comments are skipped, but for director's own ``# director-check`` and
    ``# director-health`` lines (director.ctl.health_rules); ConfigError names the first
    bad line."""
    from director.ctl.health_rules import parse_comment

    parsed: list[tuple[int, Op | HealthOp]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            try:
                health_op = parse_comment(stripped)
            except ConfigError as exc:
                raise ConfigError(f"line {number}: {exc}") from None
            if health_op is not None:
                parsed.append((number, health_op))
            continue
        try:
            parsed.append((number, parse_line(stripped)))
        except ConfigError as exc:
            raise ConfigError(f"line {number}: {exc}") from None
    return parsed


def parse_restore(text: str) -> list[Op | HealthOp]:
    return [op for _, op in parse_restore_lines(text)]


def restore(config: Config, text: str) -> Config:
    """ipvsadm -R onto ``config`` (it adds to the current table), all or nothing:
    ConfigError names the line whose command failed and nothing is applied."""
    from director.ctl.health_ops import HEALTH_OPS, apply_health, prune

    for number, op in parse_restore_lines(text):
        try:
            config = apply_health(config, op) if isinstance(op, HEALTH_OPS) else apply(config, op)
        except ConfigError as exc:
            raise ConfigError(f"line {number}: {exc}") from None
    return prune(config)


def load_rules(text: str) -> Config:
    """The configuration a rules file describes (restored onto an empty table)."""
    return restore(Config(), text)


# --- save ---------------------------------------------------------------------------


def _addr_port(addr: str, port: int) -> str:
    """ipvsadm's numeric addrport_to_anyname: ``a.b.c.d:port`` or ``[v6]:port``."""
    if ":" in addr:
        return f"[{addr}]:{port}"
    return f"{addr}:{port}"


def service_switch(svc: ServiceConf) -> str:
    """``-t VIP:PORT``, ``-u VIP:PORT``, ``-f MARK`` or ``-f MARK -6``, as ipvsadm-save
    names a service (print_service_entry with FMT_RULE)."""
    if svc.protocol == "fwm":
        return f"-f {svc.fwmark} -6" if svc.family == 6 else f"-f {svc.fwmark}"
    return f"{SERVICE_SWITCHES[svc.protocol]} {_addr_port(svc.addr, svc.port)}"


def _service_line(svc: ServiceConf) -> str:
    words = [f"-A {service_switch(svc)} -s {svc.scheduler}"]
    if svc.persistent is not None:
        words.append(f"-p {svc.persistent}")
        if svc.netmask != default_netmask(svc.family):
            words.append(f"-M {svc.netmask}")
    if svc.ops:
        words.append("-o")
    if svc.sched_flags:
        words.append(f"-b {','.join(svc.sched_flags)}")
    return " ".join(words)


def _dest_line(svc: ServiceConf, dest: DestConf) -> str:
    words = [
        f"-a {service_switch(svc)} -r {_addr_port(dest.addr, dest.port)}",
        f"{METHOD_SWITCHES[dest.method]} -w {dest.weight}",
    ]
    if dest.method == "tunnel":
        words.append(tunnel_words(dest))
    if dest.u_threshold:
        words.append(f"-x {dest.u_threshold}")
    if dest.l_threshold:
        words.append(f"-y {dest.l_threshold}")
    return " ".join(words)


def tunnel_words(dest: DestConf) -> str:
    """The tunnel's words of a saved ``-a`` line (listing.tunnel_rule)."""
    return tunnel_rule(dest.tun_type, dest.tun_port, dest.tun_flags)


def format_save(config: Config, *, checks: bool = True) -> str:
    """``ipvsadm-save -n`` of ``config`` (see the module docstring for the differences);
    with ``checks``, each service's health checks follow it as ``# director-...``
    comment lines (director.ctl.health_rules), which ipvsadm-restore skips."""
    from director.ctl.health_rules import comment_lines

    lines: list[str] = []
    if config.timeouts != Timeouts():
        t = config.timeouts
        lines.append(f"--set {t.tcp} {t.tcpfin} {t.udp}")
    for svc in config.services:
        lines.append(_service_line(svc))
        lines.extend(_dest_line(svc, dest) for dest in svc.dests)
        if checks:
            lines.extend(comment_lines(config, svc.key))
    return "".join(f"{line}\n" for line in lines)
