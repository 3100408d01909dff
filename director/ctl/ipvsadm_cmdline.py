"""ipvsadm 1.31's whole command line, parsed as ipvsadm and popt parse it.

``parse(argv)`` mirrors ipvsadm.c's ``parse_options`` and ``process_options``: popt's
word splitting (long options, ``--opt=value``, clusters of short options such as
``-Ln``, ``-lcn`` or ``-At ADDR`` where the last letter takes the next word, ``-tADDR``,
``-p``'s optional value), the first option must be a command, each option checked as it
comes (``fail(2, ...)`` with ipvsadm's words), ``set_option``'s "multiple ... options",
``commands_v_options`` as data (``generic_opt_check``), then the per-command checks
(zero port, one-packet scheduling, forwarding method, tunnel options) and the list
command's conflicts.  No arguments at all is ``-L``.

It is pure: host and service names (``ipvsadm -A -t www:http``) are looked up through
a ``Names`` the caller gives (the shell's uses getservbyname / gethostbyname as
ipvsadm does); ``NUMERIC`` resolves nothing.

``IpvsadmError.status`` is ipvsadm's exit code: 2 for its own checks (``fail(2, ...)``),
255 for popt's errors and ``tryhelp_exit(-1)`` (``process_options`` returns -1), and 255
too for what the kernel refuses (``KernelRefused``, raised by the shell when the daemon
refuses a change, and here for the one kernel check ipvsadm lets through and director
does not make the same way: a lower threshold above the upper one, ERANGE).

What director does not have (``--pe``, ``--sctp-service``) is
parsed and checked as ipvsadm does, then refused with one line and status 2
(``Unsupported``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from director.ctl.ipvsadm import TUN_OPTIONS as SHARED_TUN_OPTIONS
from director.ctl.ipvsadm import (
    RawArgs,
    build_op,
    parse_number,
    parse_service_key,
    tunnel_opt_check,
)
from director.ctl.ops import (
    MAX_FWMARK,
    MAX_THRESHOLD,
    MAX_TIMEOUT,
    Op,
    ServiceKey,
    normalize_sched_flags,
)
from director.model.config import DEFAULT_SCHEDULER, MAX_WEIGHT, TUN_TYPES, ConfigError

VERSION_LINE = "ipvsadm v1.31 2019/12/24 (compiled with popt and IPVS v1.2.1)"
TRY_HELP = "Try `{prog} -h' or '{prog} --help' for more information."
DEF_MCAST_IFN = "eth0"  # ipvsadm's default --mcast-interface
IFNAMSIZ = 16


class IpvsadmError(Exception):
    """What ipvsadm prints on stderr (``message``, one or more lines) and its exit code."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class KernelRefused(IpvsadmError):
    """The kernel's refusal (ipvsadm prints ipvs_strerror and exits 255)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 255)


class Unsupported(IpvsadmError):
    """An ipvsadm option director has no counterpart for (status 2)."""


class Names(Protocol):
    """ipvsadm's name lookups on input: host_to_addr and service_to_port."""

    def host_addr(self, name: str) -> str | None: ...

    def service_port(self, name: str, proto: str) -> int | None: ...


class _Numeric:
    def host_addr(self, name: str) -> str | None:
        return None

    def service_port(self, name: str, proto: str) -> int | None:
        return None


NUMERIC: Names = _Numeric()


# --- the option table (parse_options' poptOption table) -------------------------------

NONE, STRING, OPTIONAL = "none", "string", "optional"


@dataclass(frozen=True, slots=True)
class Option:
    long: str
    short: str | None
    arg: str  # NONE, STRING or OPTIONAL (POPT_ARGFLAG_OPTIONAL)
    tag: str  # what parse_options switches on


_TABLE: tuple[tuple[str, str | None, str, str], ...] = (
    ("add-service", "A", NONE, "A"),
    ("edit-service", "E", NONE, "E"),
    ("delete-service", "D", NONE, "D"),
    ("clear", "C", NONE, "C"),
    ("list", "L", NONE, "L"),
    ("list", "l", NONE, "L"),
    ("zero", "Z", NONE, "Z"),
    ("add-server", "a", NONE, "a"),
    ("edit-server", "e", NONE, "e"),
    ("delete-server", "d", NONE, "d"),
    ("set", None, NONE, "set"),
    ("help", "h", NONE, "h"),
    ("version", "v", NONE, "v"),
    ("restore", "R", NONE, "R"),
    ("save", "S", NONE, "S"),
    ("start-daemon", None, STRING, "start-daemon"),
    ("stop-daemon", None, STRING, "stop-daemon"),
    ("tcp-service", "t", STRING, "t"),
    ("udp-service", "u", STRING, "u"),
    ("sctp-service", None, STRING, "sctp"),
    ("fwmark-service", "f", STRING, "f"),
    ("scheduler", "s", STRING, "s"),
    ("persistent", "p", OPTIONAL, "p"),
    ("netmask", "M", STRING, "M"),
    ("real-server", "r", STRING, "r"),
    ("masquerading", "m", NONE, "m"),
    ("ipip", "i", NONE, "i"),
    ("gatewaying", "g", NONE, "g"),
    ("weight", "w", STRING, "w"),
    ("u-threshold", "x", STRING, "x"),
    ("l-threshold", "y", STRING, "y"),
    ("numeric", "n", NONE, "n"),
    ("connection", "c", NONE, "c"),
    ("mcast-interface", None, STRING, "mcast-interface"),
    ("syncid", None, STRING, "syncid"),
    ("timeout", None, NONE, "timeout"),
    ("daemon", None, NONE, "daemon"),
    ("stats", None, NONE, "stats"),
    ("rate", None, NONE, "rate"),
    ("thresholds", None, NONE, "thresholds"),
    ("persistent-conn", None, NONE, "persistent-conn"),
    ("nosort", None, NONE, "nosort"),
    ("sort", None, NONE, "sort"),
    ("exact", "X", NONE, "X"),
    ("ipv6", "6", NONE, "6"),
    ("ops", "o", NONE, "o"),
    ("pe", None, STRING, "pe"),
    ("sched-flags", "b", STRING, "b"),
    ("mcast-group", None, STRING, "mcast-group"),
    ("mcast-port", None, STRING, "mcast-port"),
    ("mcast-ttl", None, STRING, "mcast-ttl"),
    ("sync-maxlen", None, STRING, "sync-maxlen"),
    ("tun-info", None, NONE, "tun-info"),
    ("tun-type", None, STRING, "tun-type"),
    ("tun-port", None, STRING, "tun-port"),
    ("tun-nocsum", None, NONE, "tun-nocsum"),
    ("tun-csum", None, NONE, "tun-csum"),
    ("tun-remcsum", None, NONE, "tun-remcsum"),
)
OPTIONS: tuple[Option, ...] = tuple(Option(*row) for row in _TABLE)
_BY_LONG: dict[str, Option] = {}
for _opt in OPTIONS:
    _BY_LONG.setdefault(_opt.long, _opt)
_BY_SHORT: dict[str, Option] = {o.short: o for o in OPTIONS if o.short}

# The first option: the command (cmdnames), or -h / -v.
COMMANDS: dict[str, str] = {
    "A": "add-service",
    "E": "edit-service",
    "D": "delete-service",
    "C": "flush",
    "L": "list",
    "a": "add-server",
    "e": "edit-server",
    "d": "delete-server",
    "set": "set",
    "start-daemon": "start-daemon",
    "stop-daemon": "stop-daemon",
    "R": "restore",
    "S": "save",
    "Z": "zero",
}

# optnames, in OPTC order: the columns of commands_v_options.
OPTNAMES: tuple[str, ...] = (
    "numeric", "connection", "service-address", "scheduler", "persistent", "netmask",
    "real-server", "forwarding-method", "weight", "u-threshold", "l-threshold",
    "mcast-interface", "timeout", "daemon", "stats", "rate", "thresholds",
    "persistent-conn", "nosort", "syncid", "exact", "ops", "pe", "sched-flags",
    "mcast-group", "mcast-port", "mcast-ttl", "sync-maxlen", "tun-info", "tun-type",
    "tun-port", "tun-nocsum", "tun-csum", "tun-remcsum",
)  # fmt: skip

# commands_v_options: '+' compulsory, 'x' illegal, '1' exclusive, ' ' optional; one
# character per OPTNAMES column (the table vm_matrix.out shows, option by option).
COMMANDS_V_OPTIONS: dict[str, str] = {
    "add-service":    "xx+   xxxxxxxxxxxxxxx   xxxxxxxxxx",
    "edit-service":   "xx+   xxxxxxxxxxxxxxx   xxxxxxxxxx",
    "delete-service": "xx+xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "flush":          "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "list":           " 11xxxxxxxxx11       xxxxxxx xxxxx",
    "add-server":     "xx+xxx+    xxxxxxxxxxxxxxxxxx     ",
    "delete-server":  "xx+xxx+xxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "edit-server":    "xx+xxx+    xxxxxxxxxxxxxxxxxx     ",
    "set":            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "start-daemon":   "xxxxxxxxxxx xxxxxxx xxxx    xxxxxx",
    "stop-daemon":    "xxxxxxxxxxxxxxxxxxx xxxxxxxxxxxxxx",
    "restore":        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "save":           " xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "zero":           "xx xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
}  # fmt: skip

# The option (OPTNAMES entry) each tag sets.
_OPTC: dict[str, str] = {
    "t": "service-address", "u": "service-address", "sctp": "service-address",
    "f": "service-address", "s": "scheduler", "p": "persistent", "M": "netmask",
    "r": "real-server", "m": "forwarding-method", "i": "forwarding-method",
    "g": "forwarding-method", "w": "weight", "x": "u-threshold", "y": "l-threshold",
    "n": "numeric", "c": "connection", "mcast-interface": "mcast-interface",
    "syncid": "syncid", "timeout": "timeout", "daemon": "daemon", "stats": "stats",
    "rate": "rate", "thresholds": "thresholds", "persistent-conn": "persistent-conn",
    "nosort": "nosort", "X": "exact", "o": "ops", "pe": "pe", "b": "sched-flags",
    "mcast-group": "mcast-group", "mcast-port": "mcast-port", "mcast-ttl": "mcast-ttl",
    "sync-maxlen": "sync-maxlen", "tun-info": "tun-info", "tun-type": "tun-type",
    "tun-port": "tun-port", "tun-nocsum": "tun-nocsum", "tun-csum": "tun-csum",
    "tun-remcsum": "tun-remcsum",
}  # fmt: skip

# The tunnel options tunnel_types_v_options rules (director.ctl.ipvsadm.TUN_OPTIONS).
TUN_OPTIONS = tuple(name.replace("_", "-") for name in SHARED_TUN_OPTIONS)

METHOD_FLAGS: dict[str, str] = {"m": "m", "i": "i", "g": "g"}
PROTOCOLS: dict[str, str] = {"t": "tcp", "u": "udp", "sctp": "sctp", "f": "fwm"}


# --- popt -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    option: Option
    value: str | None
    word: str  # the argv word it came from (poptBadOption)


class PoptError(IpvsadmError):
    """popt's error: ``WORD: reason``, and ipvsadm returns -1 (exit 255)."""

    def __init__(self, word: str, reason: str) -> None:
        super().__init__(f"{word}: {reason}", 255)


class Popt:
    """poptGetNextOpt over ``argv`` (without the program name): ``options()`` yields
    the options in order, ``leftover`` collects the other words (popt permutes them
    to the end); ``--`` ends the options."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)
        self.leftover: list[str] = []

    def options(self) -> Iterator[Token]:
        index, argv = 0, self.argv
        while index < len(argv):
            word = argv[index]
            index += 1
            if word == "--":
                self.leftover.extend(argv[index:])
                return
            if not word.startswith("-") or word == "-":
                self.leftover.append(word)
                continue
            if word.startswith("--"):
                name, eq, attached = word[2:].partition("=")
                option = _BY_LONG.get(name)
                if option is None:
                    raise PoptError(word, "unknown option")
                if option.arg == NONE:
                    if eq:
                        raise PoptError(word, "option does not take an argument")
                    yield Token(option, None, word)
                    continue
                if eq:
                    yield Token(option, attached, word)
                    continue
                value, index = self._next_value(option, word, index)
                yield Token(option, value, word)
                continue
            cluster = word[1:]
            while cluster:
                letter, cluster = cluster[0], cluster[1:]
                option = _BY_SHORT.get(letter)
                if option is None:
                    raise PoptError(word, "unknown option")
                if option.arg == NONE:
                    yield Token(option, None, word)
                    continue
                if cluster:  # -tADDR, -t=ADDR
                    yield Token(option, cluster[1:] if cluster[0] == "=" else cluster, word)
                    break
                value, index = self._next_value(option, word, index)
                yield Token(option, value, word)

    def _next_value(self, option: Option, word: str, index: int) -> tuple[str | None, int]:
        if index >= len(self.argv):
            if option.arg == OPTIONAL:
                return None, index
            raise PoptError(word, "missing argument")
        following = self.argv[index]
        if option.arg == OPTIONAL and following.startswith("-"):
            return None, index
        return following, index + 1


# --- what a command line says ---------------------------------------------------------


@dataclass
class Command:
    """One parsed ipvsadm command line."""

    command: str  # cmdnames: "add-service", "list", "flush", "set", ... "help", "version"
    options: set[str] = field(default_factory=set)  # OPTNAMES given
    raw: RawArgs = field(default_factory=RawArgs)
    protocol: str = ""  # "tcp", "udp", "sctp", "fwm" of the service given
    key: ServiceKey | None = None
    daemon: dict[str, str] = field(default_factory=dict)  # start/stop-daemon: parse_daemon's
    pe: str | None = None
    tun_type: str = "ipip"
    op: Op | None = None  # for the commands that change the table

    @property
    def numeric(self) -> bool:
        return "numeric" in self.options

    def has(self, name: str) -> bool:
        return name in self.options


def fail(message: str) -> IpvsadmError:
    return IpvsadmError(message, 2)


def _number(text: str, low: int, high: int, message: str) -> int:
    """string_to_number (strtol, base 10) within [low, high], or fail(2, message)."""
    try:
        return parse_number(text.lstrip(" \t\n"), low, high, message)
    except ConfigError:
        raise fail(message) from None


def _ipv6(text: str) -> str | None:
    if "%" in text:
        return None
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        return None


def _ipv4(text: str, names: Names) -> str | None:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        return names.host_addr(text) if text else None


def parse_service(text: str, proto: str, names: Names) -> tuple[str, int | None] | None:
    """ipvsadm's parse_service: ``host[:port]``, ``[IPv6]:port`` or a bare IPv6
    address; the host by name too (IPv4, gethostbyname), the port by service name of
    ``proto`` (getservbyname); None where ipvsadm gets SERVICE_NONE."""
    if not text or text.isdigit():
        return None
    buf, port_text = text, None
    bracketed = buf.startswith("[")
    if bracketed:
        inner, sep, rest = buf[1:].partition("]")
        if not sep or not rest.startswith(":"):
            return None
        buf, port_text = inner, rest[1:]
    addr = _ipv6(buf)
    if addr is None:
        if bracketed:
            port_text = None  # ipvsadm cut the string at ':' already: the port is lost
        else:
            head, sep, tail = buf.rpartition(":")
            if sep:
                buf, port_text = head, tail
        addr = _ipv4(buf, names)
        if addr is None:
            return None
    if port_text is None:
        return addr, None
    try:
        return addr, parse_number(port_text, 0, 65535, "")
    except ConfigError:
        port = names.service_port(port_text, proto) if port_text else None
        return (addr, port) if port is not None else None


def _addr_text(addr: str, port: int | None) -> str:
    """The numeric text build_op's parse_addr_port takes back."""
    if port is None:
        return addr
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _check_v4_netmask(text: str, names: Names) -> None:
    """parse_netmask: inet_aton (a dotted quad, or one number) or a host name."""
    if text.isdigit():
        return
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        if names.host_addr(text) is None:
            raise fail("illegal virtual server persistent mask specified") from None


def _check_v6_netmask(text: str) -> None:
    """atoi(optarg) within 1..128."""
    digits = ""
    for char in text.lstrip(" \t"):
        if not char.isdigit():
            break
        digits += char
    if not digits or not 1 <= int(digits) <= 128:
        raise fail("illegal ipv6 netmask specified")


def _mcast_group(text: str) -> None:
    family = 6 if ":" in text else 4
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        addr = None
    if addr is None or addr.version != family or not addr.is_multicast:
        raise fail(f"invalid IPv{family} mcast-group `{text}'")


class _State:
    """ce, options and format as parse_options fills them."""

    def __init__(self, command: str) -> None:
        self.cmd = Command(command)
        self.svc_af = 4
        self.svc_port = 0
        self.fwmark = 0
        self.dest_af = 4
        self.dest: tuple[str, int] | None = None
        self.sched_flags = ""
        self.tun_options: set[str] = set()

    def set_option(self, name: str) -> None:
        if name in self.cmd.options:
            raise fail(f"multiple '{name}' options specified")
        self.cmd.options.add(name)


def _first(popt: Iterator[Token], prog: str) -> Token:
    try:
        first = next(popt)
    except (StopIteration, PoptError):
        raise IpvsadmError(TRY_HELP.format(prog=prog), 255) from None
    return first


def parse(argv: Sequence[str], *, prog: str = "ipvsadm", names: Names = NUMERIC) -> Command:
    """One ipvsadm command line (without the program name); IpvsadmError says what
    ipvsadm prints and the status it exits with."""
    if not argv:
        return Command("list")
    popt = Popt(argv)
    tokens = popt.options()
    first = _first(tokens, prog)
    tag = first.option.tag
    if tag in ("h", "v"):
        return Command("help" if tag == "h" else "version")
    if tag not in COMMANDS:
        raise IpvsadmError(TRY_HELP.format(prog=prog), 255)
    state = _State(COMMANDS[tag])
    if tag in ("start-daemon", "stop-daemon"):
        if first.value not in ("master", "backup"):
            which = "start-daemon parameter" if tag == "start-daemon" else "start_daemon"
            raise fail(f"illegal {which} specified")
        state.cmd.daemon["state"] = first.value
    for token in tokens:
        _option(state, token, names)
    _leftovers(state, popt.leftover)
    cmd = state.cmd
    if state.sched_flags:
        flags = [flag for flag in state.sched_flags.split(",") if flag]
        try:
            normalize_sched_flags(tuple(flags), cmd.raw.scheduler or DEFAULT_SCHEDULER)
        except ConfigError as exc:
            raise fail(str(exc)) from None
        cmd.raw.sched_flags = ",".join(flags) or None
    _generic_opt_check(cmd)
    _command_checks(state)
    _unsupported(cmd)
    if cmd.raw.service is not None:
        cmd.key = parse_service_key(*cmd.raw.service, ipv6=cmd.raw.ipv6)
    cmd.op = _build(cmd)
    return cmd


def _option(state: _State, token: Token, names: Names) -> None:
    """One option of parse_options' loop (after the command)."""
    tag, value, cmd = token.option.tag, token.value, state.cmd
    if tag in COMMANDS or tag in ("h", "v"):
        raise fail(f"invalid option `{token.word}'")
    if tag in _OPTC:  # --sort and -6 set no option
        state.set_option(_OPTC[tag])
    arg = value if value is not None else ""
    raw = cmd.raw
    if tag in ("t", "u", "sctp"):
        cmd.protocol = PROTOCOLS[tag]
        parsed = parse_service(arg, cmd.protocol, names)
        if parsed is None:
            raise fail("illegal virtual server address[:port] specified")
        addr, port = parsed
        state.svc_af = 6 if ":" in addr else 4
        state.svc_port = port or 0
        raw.service = (cmd.protocol, _addr_text(addr, port))
    elif tag == "f":
        cmd.protocol = "fwm"
        state.svc_af = 4
        state.fwmark = _number(arg, 1, MAX_FWMARK, f"invalid fwmark value `{arg}' specified")
        raw.service = ("fwm", str(state.fwmark))
    elif tag == "s":
        raw.scheduler = arg[:15]
    elif tag == "p":
        if value is not None:
            _number(arg, 1, MAX_TIMEOUT, f"invalid timeout value `{arg}' specified")
        raw.persistent = value if value is not None else ""
    elif tag == "M":
        if state.svc_af == 6:
            _check_v6_netmask(arg)
        else:
            _check_v4_netmask(arg, names)
        raw.netmask = arg
    elif tag == "r":
        parsed = parse_service(arg, cmd.protocol or "tcp", names)
        if parsed is None:
            raise fail("illegal real server address[:port] specified")
        addr, port = parsed
        state.dest_af = 6 if ":" in addr else 4
        state.dest = (addr, state.svc_port if port is None else port)  # vport copied
        raw.real_server = _addr_text(*state.dest)
    elif tag in METHOD_FLAGS:
        raw.method = METHOD_FLAGS[tag]
    elif tag in ("w", "x", "y"):
        words = {"w": "weight", "x": "u_threshold", "y": "l_threshold"}
        high = MAX_WEIGHT if tag == "w" else MAX_THRESHOLD
        _number(arg, 0, high, f"illegal {words[tag]} specified")
        setattr(raw, {"w": "weight", "x": "u_threshold", "y": "l_threshold"}[tag], arg)
    elif tag == "6":
        if not state.fwmark:
            raise fail("-6 used before -f\n")
        state.svc_af = 6
        raw.ipv6 = True
    elif tag == "o":
        raw.ops = True
    elif tag == "pe":
        cmd.pe = arg
    elif tag == "b":
        state.sched_flags = arg
    elif tag in _DAEMON_VALUES:
        low, high, key, message = _DAEMON_VALUES[tag]
        if tag == "mcast-group":
            _mcast_group(arg)
        elif tag == "mcast-interface":
            arg = arg[: IFNAMSIZ - 1]
        else:
            _number(arg, low, high, message)
        cmd.daemon[key] = arg
    elif tag == "tun-type":
        if arg not in TUN_TYPES:
            raise fail("illegal tunnel type specified")
        cmd.tun_type = arg
        raw.tun_type = arg
    elif tag == "tun-port":
        _number(arg, 1, 65535, "illegal tunnel port specified")
        state.tun_options.add(tag)
        raw.tun_port = arg
    elif tag in TUN_OPTIONS:
        state.tun_options.add(tag)
        setattr(raw, tag.replace("-", "_"), True)


# --mcast-interface and the other daemon options: (low, high, parse_daemon's key, message).
_DAEMON_VALUES: dict[str, tuple[int, int, str, str]] = {
    "mcast-interface": (0, 0, "mcast_ifn", ""),
    "syncid": (0, 255, "syncid", "illegal syncid specified"),
    "mcast-group": (0, 0, "mcast_group", ""),
    "mcast-port": (1, 65535, "mcast_port", "illegal mcast-port specified"),
    "mcast-ttl": (1, 255, "mcast_ttl", "illegal mcast-ttl specified"),
    "sync-maxlen": (1, 65535 - 20 - 8, "sync_maxlen", "illegal sync-maxlen specified"),
}


def _leftovers(state: _State, leftover: list[str]) -> None:
    """--set's three timeouts, then "unexpected argument" for anything else."""
    words = list(leftover)
    if state.cmd.command == "set":
        if len(words) < 3:
            raise fail("--set option requires 3 timeout values")
        for word in words[:3]:
            _number(word, 0, MAX_TIMEOUT, f"invalid timeout value `{word}' specified")
        state.cmd.raw.timeouts = tuple(words[:3])
        words = words[3:]
    if words:
        raise fail(f"unexpected argument {words[0]}")


def _generic_opt_check(cmd: Command) -> None:
    """generic_opt_check over COMMANDS_V_OPTIONS, column by column."""
    row = COMMANDS_V_OPTIONS[cmd.command]
    last: str | None = None
    for name, rule in zip(OPTNAMES, row, strict=True):
        if name not in cmd.options:
            if rule == "+":
                raise fail(
                    f"You need to supply the '{name}' option for the '{cmd.command}' command"
                )
            continue
        if rule == "x":
            raise fail(f"Illegal '{name}' option with the '{cmd.command}' command")
        if rule == "1":
            if last is None:
                last = name
                continue
            raise fail(
                f"The option '{name}' conflicts with the '{last}' option "
                f"in the '{cmd.command}' command"
            )


def _command_checks(state: _State) -> None:
    """process_options' checks after generic_opt_check."""
    cmd, raw = state.cmd, state.cmd.raw
    if cmd.command in ("add-service", "edit-service"):
        if not state.fwmark and not state.svc_port and raw.persistent is None:
            raise fail("Zero port specified for non-persistent service")
        if raw.ops and not state.fwmark and cmd.protocol != "udp":
            raise fail("One-Packet Scheduling is only for UDP virtual services")
    if cmd.command in ("add-server", "edit-server"):
        method = raw.method or "g"
        if state.dest is not None and not state.fwmark and method in ("g", "i"):
            state.dest = (state.dest[0], state.svc_port)  # DR and TUN: the service port
            raw.real_server = _addr_text(*state.dest)
        if state.dest_af != state.svc_af and method != "i":
            raise fail("Different address family is allowed only for tunneling servers")
        if (cmd.has("tun-type") or state.tun_options) and method != "i":
            raise fail("Tunnel options conflict with forward method")
        _tunnel_opt_check(cmd.tun_type, state.tun_options)
    if cmd.command == "list":
        numbers = cmd.has("stats") or cmd.has("rate") or cmd.has("thresholds")
        shown = cmd.has("timeout") or cmd.has("daemon")
        if ((shown or cmd.has("connection")) and numbers) or (shown and cmd.has("persistent-conn")):
            raise fail("options conflicts in the list command")


def _tunnel_opt_check(tun_type: str, given: set[str]) -> None:
    """ipvsadm's tunnel_opt_check (director.ctl.ipvsadm's), its refusal as ipvsadm's
    fail(2, ...)."""
    try:
        tunnel_opt_check(tun_type, [name.replace("-", "_") for name in given])
    except ConfigError as exc:
        raise fail(str(exc)) from None


def _unsupported(cmd: Command) -> None:
    """What ipvsadm takes and director has not: one line, status 2."""
    if cmd.protocol == "sctp":
        raise Unsupported("SCTP services (--sctp-service) are not supported by director")
    if cmd.pe is not None:
        raise Unsupported(f"persistence engine `{cmd.pe}' (--pe) is not supported by director")


# ipvsadm's command names -> build_op's (director.ctl.ipvsadm.COMMAND_OPTIONS).
_CHANGES: dict[str, str] = {
    "add-service": "add-service",
    "edit-service": "edit-service",
    "delete-service": "delete-service",
    "add-server": "add-server",
    "edit-server": "edit-server",
    "delete-server": "delete-server",
    "flush": "clear",
    "set": "set-timeout",
}


def _build(cmd: Command) -> Op | None:
    """The operation of a command that changes the table (None for the others), by the
    shared build_op.  ipvsadm -e sends a whole destination: what is not given takes
    ipvsadm's defaults (-g, weight 1, thresholds 0), as the kernel then has it."""
    if cmd.command not in _CHANGES:
        return None
    raw = cmd.raw
    if raw.tun_type == "ipip" and raw.method != "i":
        raw.tun_type = None  # checked above: only with -i
    if cmd.command == "edit-server":
        raw.method = raw.method or "g"
        raw.weight = raw.weight if raw.weight is not None else "1"
        raw.u_threshold = raw.u_threshold or "0"
        raw.l_threshold = raw.l_threshold or "0"
        if raw.method == "i":
            raw.tun_type = raw.tun_type or "ipip"  # a whole destination: ipip by default
    if cmd.command in ("add-server", "edit-server"):
        upper, lower = int(raw.u_threshold or 0), int(raw.l_threshold or 0)
        if lower > upper:  # ip_vs_ctl.c ip_vs_check_dest... : -ERANGE
            raise KernelRefused("Numerical result out of range")
    try:
        return build_op(_CHANGES[cmd.command], raw)
    except ConfigError as exc:
        raise kernel_or_own(str(exc)) from None


# Refusals that are the kernel's in ipvsadm (exit 255, ipvs_strerror's words), by the
# start of director's message for them; the rest are ipvsadm's own checks (exit 2).
KERNEL_MESSAGES: dict[str, str] = {
    "Service already exists": "Service already exists",
    "No such service": "No such service",
    "No such destination": "No such destination",
    "Destination already exists": "Destination already exists",
    "Scheduler or persistence engine not found": "Scheduler or persistence engine not found",
    "lower threshold is higher than upper threshold": "Numerical result out of range",
    "No daemon is running": "No daemon is running",
}


# ... and by the end of it: the sync daemon's "IFNAME: No such device".
KERNEL_ENDINGS: dict[str, str] = {": No such device": "No such device"}


def kernel_or_own(message: str) -> IpvsadmError:
    """A director refusal as ipvsadm reports it: the kernel's words and 255 for what
    the kernel refuses, else the message and 2."""
    for start, words in KERNEL_MESSAGES.items():
        if message.startswith(start):
            return KernelRefused(words)
    for end, words in KERNEL_ENDINGS.items():
        if message.endswith(end):
            return KernelRefused(words)
    return fail(message)


# usage_exit's text after the version line, @PROG@ for the program name.
USAGE = """\
Usage:
  @PROG@ -A|E virtual-service [-s scheduler] [-p [timeout]] [-M netmask] \
[--pe persistence_engine] [-b sched-flags]
  @PROG@ -D virtual-service
  @PROG@ -C
  @PROG@ -R
  @PROG@ -S [-n]
  @PROG@ -a|e virtual-service -r server-address [options]
  @PROG@ -d virtual-service -r server-address
  @PROG@ -L|l [virtual-service] [options]
  @PROG@ -Z [virtual-service]
  @PROG@ --set tcp tcpfin udp
  @PROG@ --start-daemon {master|backup} [daemon-options]
  @PROG@ --stop-daemon {master|backup}
  @PROG@ -h

Commands:
Either long or short options are allowed.
  --add-service     -A        add virtual service with options
  --edit-service    -E        edit virtual service with options
  --delete-service  -D        delete virtual service
  --clear           -C        clear the whole table
  --restore         -R        restore rules from stdin
  --save            -S        save rules to stdout
  --add-server      -a        add real server with options
  --edit-server     -e        edit real server with options
  --delete-server   -d        delete real server
  --list            -L|-l     list the table
  --zero            -Z        zero counters in a service or all services
  --set tcp tcpfin udp        set connection timeout values
  --start-daemon              start connection sync daemon
  --stop-daemon               stop connection sync daemon
  --help            -h        display this help message

virtual-service:
  --tcp-service|-t  service-address   service-address is host[:port]
  --udp-service|-u  service-address   service-address is host[:port]
  --sctp-service    service-address   service-address is host[:port]
  --fwmark-service|-f fwmark          fwmark is an integer greater than zero

Options:
  --ipv6         -6                   fwmark entry uses IPv6
  --scheduler    -s scheduler         one of rr|wrr|lc|wlc|lblc|lblcr|dh|sh|sed|nq|fo|ovf|mh,
                                      the default scheduler is wlc.
  --pe            engine              alternate persistence engine may be sip,
                                      not set by default.
  --persistent   -p [timeout]         persistent service
  --netmask      -M netmask           persistent granularity mask
  --real-server  -r server-address    server-address is host (and port)
  --gatewaying   -g                   gatewaying (direct routing) (default)
  --ipip         -i                   ipip encapsulation (tunneling)
  --masquerading -m                   masquerading (NAT)
  --tun-type      type                one of ipip|gue|gre,
                                      the default tunnel type is ipip.
  --tun-port      port                tunnel destination port
  --tun-nocsum                        tunnel encapsulation without checksum
  --tun-csum                          tunnel encapsulation with checksum
  --tun-remcsum                       tunnel encapsulation with remote checksum
  --weight       -w weight            capacity of real server
  --u-threshold  -x uthreshold        upper threshold of connections
  --l-threshold  -y lthreshold        lower threshold of connections
  --connection   -c                   output of current IPVS connections
  --timeout                           output of timeout (tcp tcpfin udp)
  --daemon                            output of daemon information
  --stats                             output of statistics information
  --rate                              output of rate information
  --exact                             expand numbers (display exact values)
  --thresholds                        output of thresholds information
  --persistent-conn                   output of persistent connection info
  --tun-info                          output of tunnel information
  --nosort                            disable sorting output of service/server entries
  --sort                              does nothing, for backwards compatibility
  --ops          -o                   one-packet scheduling
  --numeric      -n                   numeric output of addresses and ports
  --sched-flags  -b flags             scheduler flags (comma-separated)
Daemon Options:
  --syncid sid                        syncid for connection sync (default=255)
  --sync-maxlen length                Max sync message length (default=1472)
  --mcast-interface interface         multicast interface for connection sync
  --mcast-group address               IPv4/IPv6 group (default=224.0.0.81)
  --mcast-port port                   UDP port (default=8848)
  --mcast-ttl ttl                     Multicast TTL (default=1)
"""


def usage(prog: str) -> str:
    """ipvsadm -h (usage_exit(argv[0], 0)): the version line, then the usage."""
    return VERSION_LINE + "\n" + USAGE.replace("@PROG@", prog)
