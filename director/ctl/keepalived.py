"""keepalived.conf's ``virtual_server`` blocks, brought over as director services,
real servers and checks (``dirctl import-keepalived``).

A parser of keepalived's configuration syntax, written from its documentation
(keepalived.conf(5)): statements are one line of words; ``#`` and ``!`` start
comments; ``"..."`` quotes a word with spaces; a statement followed by ``{`` (on its
line or the next) opens a block that ``}`` closes; ``include PATTERN`` splices in the
files the glob names (relative to the including file).  ``parse_file`` gives a tree
of ``Node``; malformed input raises ``ConfigError`` naming the file and line.

``translate`` turns the tree into dirctl command lines, each with the place it came
from, and lists what it cannot translate.  Blocks other than ``virtual_server``
(``global_defs``, ``vrrp_instance``, ...) are not director's business and only noted,
but for two settings of ``global_defs`` that keepalived hands to IPVS itself:
``lvs_timeouts`` (ipvsadm --set) and ``lvs_sync_daemon`` (ipvsadm --start-daemon,
as backup while the instance it names is not MASTER; ``dirctl vrrp-notify`` in that
instance's notify scripts switches it, see director.ctl.vrrp).
"""

from __future__ import annotations

import glob
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from director.ctl.health_ops import apply_health
from director.ctl.health_rules import parse_words
from director.ctl.ipvsadm import format_save, parse_args
from director.ctl.ops import apply
from director.model.config import TUN_FLAGS, TUN_TYPES, Config, ConfigError
from director.model.sync import DaemonConf, parse_daemon

MAX_INCLUDE_DEPTH = 8


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    file: str
    line: int
    quoted: bool = False


@dataclass(slots=True)
class Node:
    keyword: str
    args: list[str]
    file: str
    line: int
    children: list[Node] | None = None  # None: a plain statement, not a block

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def blocks(self) -> list[Node]:
        return self.children or []


def _fail(file: str, line: int, reason: str) -> ConfigError:
    return ConfigError(f"{file}:{line}: {reason}")


def _split_line(text: str, file: str, number: int) -> list[Token]:
    tokens: list[Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in " \t\r":
            i += 1
        elif ch in "#!":
            break
        elif ch in "{}":
            tokens.append(Token(ch, file, number))
            i += 1
        elif ch == '"':
            end = text.find('"', i + 1)
            if end < 0:
                raise _fail(file, number, "unterminated quoted string")
            tokens.append(Token(text[i + 1 : end], file, number, quoted=True))
            i = end + 1
        else:
            start = i
            while i < len(text) and text[i] not in ' \t\r{}"':
                i += 1
            tokens.append(Token(text[start:i], file, number))
    return tokens


def tokenize(path: Path, depth: int = 0) -> list[Token]:
    """Every word of ``path``, includes spliced in where they stand."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    tokens: list[Token] = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = _split_line(line, str(path), number)
        if words and words[0].text == "include" and not words[0].quoted:
            if len(words) != 2:
                raise _fail(str(path), number, "include takes one file or pattern")
            if depth >= MAX_INCLUDE_DEPTH:
                raise _fail(str(path), number, "includes nested too deep")
            pattern = os.path.join(path.parent, words[1].text)
            names = sorted(glob.glob(pattern))
            if not names and not glob.has_magic(pattern):
                raise _fail(str(path), number, f"include: no such file {words[1].text}")
            for name in names:
                tokens += tokenize(Path(name), depth + 1)
            continue
        tokens += words
    return tokens


def parse_tokens(tokens: list[Token]) -> list[Node]:
    nodes, pos = _block(tokens, 0, None)
    assert pos == len(tokens)
    return nodes


def _block(tokens: list[Token], pos: int, opener: Token | None) -> tuple[list[Node], int]:
    nodes: list[Node] = []
    while pos < len(tokens):
        tok = tokens[pos]
        if tok.text == "}" and not tok.quoted:
            if opener is None:
                raise _fail(tok.file, tok.line, "'}' without a block to close")
            return nodes, pos + 1
        if tok.text == "{" and not tok.quoted:
            raise _fail(tok.file, tok.line, "'{' without a keyword before it")
        node = Node(tok.text, [], tok.file, tok.line)
        pos += 1
        while (
            pos < len(tokens)
            and (tokens[pos].file, tokens[pos].line) == (tok.file, tok.line)
            and (tokens[pos].quoted or tokens[pos].text not in "{}")
        ):
            node.args.append(tokens[pos].text)
            pos += 1
        if pos < len(tokens) and tokens[pos].text == "{" and not tokens[pos].quoted:
            node.children, pos = _block(tokens, pos + 1, tokens[pos])
        nodes.append(node)
    if opener is not None:
        raise _fail(opener.file, opener.line, "block not closed: '}' missing")
    return nodes, pos


def parse_file(path: Path) -> list[Node]:
    return parse_tokens(tokenize(path))


# --- translation --------------------------------------------------------------------

SCHEDULERS = {"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf",
              "mh", "twos"}  # fmt: skip
METHODS = {"NAT": "-m", "DR": "-g", "TUN": "-i"}
CHECKERS = {"TCP_CHECK": "tcp", "HTTP_GET": "http", "SSL_GET": "https", "MISC_CHECK": "misc"}


@dataclass(slots=True)
class Translation:
    commands: list[tuple[str, list[str]]] = field(default_factory=list)  # (where, argv)
    untranslated: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    sync_daemons: list[tuple[str, DaemonConf]] = field(default_factory=list)  # (where, conf)


def _one(node: Node, count: int = 1) -> list[str]:
    if len(node.args) != count:
        raise _fail(node.file, node.line, f"{node.keyword} takes {count} value(s)")
    return node.args


def _int(node: Node) -> int:
    try:
        return int(_one(node)[0])
    except ValueError:
        raise _fail(node.file, node.line, f"{node.keyword}: not a number") from None


def _seconds(node: Node) -> str:
    try:
        value = float(_one(node)[0])
    except ValueError:
        raise _fail(node.file, node.line, f"{node.keyword}: not a number") from None
    return f"{value:g}"


def _addr_port(addr: str, port: str) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def translate(nodes: list[Node]) -> Translation:
    out = Translation()
    vrids = _vrids(nodes)
    for node in nodes:
        if node.keyword == "global_defs" and node.children is not None:
            _global_defs(node, vrids, out)
    for node in nodes:
        if node.keyword == "virtual_server" and node.children is not None:
            _virtual_server(node, out)
        else:
            out.ignored.append(f"{node.where}: {node.keyword} (not a virtual_server)")
    for where, conf in out.sync_daemons:
        out.commands.append((where, _start_daemon_argv(conf)))
    return out


# --- global_defs: what keepalived gives IPVS ---------------------------------------------

# lvs_sync_daemon's keyword options (keepalived.conf(5)) -> (start-daemon argument,
# keepalived's range); group is checked as ipvsadm checks --mcast-group.
SYNC_OPTIONS: dict[str, tuple[str, int, int]] = {
    "id": ("syncid", 0, 255),
    "maxlen": ("sync_maxlen", 1, 65507),
    "port": ("mcast_port", 1, 65535),
    "ttl": ("mcast_ttl", 1, 255),
}
TIMEOUT_WORDS = ("tcp", "tcpfin", "udp")  # lvs_timeouts' words, ipvsadm --set's order


def _vrids(nodes: list[Node]) -> dict[str, int | None]:
    """Each vrrp_instance's virtual_router_id (None when it has none)."""
    found: dict[str, int | None] = {}
    for node in nodes:
        if node.keyword == "vrrp_instance" and node.children is not None and node.args:
            vrid = next((n for n in node.blocks() if n.keyword == "virtual_router_id"), None)
            found[node.args[0]] = _int(vrid) if vrid is not None else None
    return found


def _global_defs(block: Node, vrids: dict[str, int | None], out: Translation) -> None:
    for node in block.blocks():
        if node.keyword == "lvs_sync_daemon":
            out.sync_daemons += [(node.where, conf) for conf in _sync_daemon(node, vrids)]
        elif node.keyword == "lvs_timeouts":
            out.commands.append((node.where, ["set-timeout", *_timeouts(node)]))
        elif node.keyword == "lvs_sync_daemon_interface":
            out.untranslated.append(f"{node.where}: {node.keyword} (use lvs_sync_daemon)")


def _sync_daemon(node: Node, vrids: dict[str, int | None]) -> list[DaemonConf]:
    """``lvs_sync_daemon IF [[inst] INSTANCE] [id N] [maxlen N] [port N] [ttl N]
    [group ADDR]``: the backup daemon when an instance is named (its notify scripts
    make it master), master and backup both when none is (keepalived runs both
    then); the syncid defaults to the instance's virtual_router_id, else 0."""
    if not node.args:
        raise _fail(node.file, node.line, "lvs_sync_daemon needs an interface")
    args: dict[str, object] = {"mcast_ifn": node.args[0]}
    instance: str | None = None
    words = node.args[1:]
    i = 0
    while i < len(words):
        word = words[i]
        if word in (*SYNC_OPTIONS, "group", "inst"):
            if i + 1 >= len(words):
                raise _fail(node.file, node.line, f"lvs_sync_daemon: {word} needs a value")
            value = words[i + 1]
            if word == "inst":
                instance = value
            elif word == "group":
                args["mcast_group"] = value
            else:
                name, low, high = SYNC_OPTIONS[word]
                if not value.isdigit() or not low <= int(value) <= high:
                    reason = f"lvs_sync_daemon: {word} must be {low} to {high}, not {value!r}"
                    raise _fail(node.file, node.line, reason)
                args[name] = int(value)
            i += 2
        elif instance is None and i == 0:
            instance = word
            i += 1
        else:
            raise _fail(node.file, node.line, f"lvs_sync_daemon: unexpected {word!r}")
    if instance is not None:
        if instance not in vrids:
            raise _fail(node.file, node.line, f"lvs_sync_daemon: no vrrp_instance {instance}")
        args.setdefault("syncid", vrids[instance] or 0)
    states = ("backup",) if instance is not None else ("master", "backup")
    try:
        return [parse_daemon({**args, "state": state}) for state in states]
    except ConfigError as exc:
        raise _fail(node.file, node.line, f"lvs_sync_daemon: {exc}") from None


def _timeouts(node: Node) -> list[str]:
    """``lvs_timeouts [tcp N] [tcpfin N] [udp N]`` as ipvsadm --set's three values,
    0 (unchanged) for those not given."""
    got: dict[str, str] = {}
    words = node.args
    if not words or len(words) % 2:
        raise _fail(node.file, node.line, "lvs_timeouts takes pairs: tcp|tcpfin|udp SECONDS")
    for word, value in zip(words[::2], words[1::2], strict=True):
        if word not in TIMEOUT_WORDS or word in got:
            raise _fail(node.file, node.line, f"lvs_timeouts: unexpected {word!r}")
        if not value.isdigit():
            raise _fail(node.file, node.line, f"lvs_timeouts: {word}: not a number: {value!r}")
        got[word] = value
    return [got.get(word, "0") for word in TIMEOUT_WORDS]


def _start_daemon_argv(conf: DaemonConf) -> list[str]:
    argv = ["start-daemon", conf.state, "--mcast-interface", conf.mcast_ifn,
            "--syncid", str(conf.syncid)]  # fmt: skip
    defaults = DaemonConf(conf.state, conf.mcast_ifn)
    for name, option in (("sync_maxlen", "--sync-maxlen"), ("mcast_group", "--mcast-group"),
                         ("mcast_port", "--mcast-port"), ("mcast_ttl", "--mcast-ttl")):  # fmt: skip
        if getattr(conf, name) != getattr(defaults, name):
            argv += [option, str(getattr(conf, name))]
    return argv


def _family(addr: str) -> int:
    return 6 if ":" in addr else 4


def _fwmark_family(vs: Node, method: str, out: Translation) -> int:
    """The address family of a ``virtual_server fwmark N``, as keepalived's
    check/check_parser.c settles it while it reads the block in order: the first of
    ``ip_family inet|inet6`` (ip_family_handler), ``persistence_granularity`` (pgr_handler:
    a dotted mask is IPv4, a prefix length IPv6) and a real server not tunnelled
    (rs_end_handler) decides; failing all three, its tunnelled real servers' family
    when they agree, else IPv4 (vs_end_handler)."""
    servers: list[str] = []
    for node in vs.blocks():
        if node.keyword == "ip_family" and node.children is None:
            word = _one(node)[0]
            if word in ("inet", "inet6"):
                return 6 if word == "inet6" else 4
            out.untranslated.append(f"{node.where}: ip_family {word}")
        elif node.keyword == "persistence_granularity" and node.children is None:
            return 4 if "." in _one(node)[0] else 6
        elif node.keyword == "real_server" and node.args:
            if method != "-i":
                return _family(node.args[0])
            servers.append(node.args[0])
    families = {_family(addr) for addr in servers}
    return families.pop() if len(families) == 1 else 4


def _service_words(node: Node, protocol: str, method: str, out: Translation) -> list[str] | None:
    args = node.args
    if len(args) == 2 and args[0] == "fwmark":
        six = _fwmark_family(node, method, out) == 6
        return ["-f", args[1], "-6"] if six else ["-f", args[1]]
    if len(args) == 2 and args[0] != "group":
        return ["-u" if protocol == "UDP" else "-t", _addr_port(args[0], args[1])]
    return None


def _lb_kind(node: Node) -> tuple[str, list[str]]:
    """``lb_kind NAT|DR|TUN [type ipip|gue|gre] [port N] [nocsum|csum|remcsum]`` as
    ipvsadm's switch and tunnel options, read as keepalived's svr_forwarding_handler
    reads it (check_parser.c), with its checks: a GUE tunnel needs a port and only it
    has one, IPIP has no checksum option, GRE no remote checksum."""
    if not node.args:
        raise _fail(node.file, node.line, f"{node.keyword} takes a value")
    word = node.args[0].upper()
    if word not in METHODS:
        raise _fail(node.file, node.line, f"{node.keyword}: NAT, DR or TUN, not {word}")
    tun_type, port, csum = "ipip", "", "nocsum"
    rest = iter(node.args[1:])
    for option in rest:
        if option in ("type", "port"):
            value = next(rest, None)
            if value is None:
                raise _fail(node.file, node.line, f"{node.keyword}: {option} takes a value")
            if option == "type" and value not in TUN_TYPES:
                raise _fail(node.file, node.line, f"Unknown tunnel type {value}")
            if option == "port" and not (value.isdigit() and 1 <= int(value) <= 65535):
                raise _fail(node.file, node.line, f"Invalid gue tunnel port {value}")
            tun_type, port = (value, port) if option == "type" else (tun_type, value)
        elif option in TUN_FLAGS:
            csum = option
        else:
            raise _fail(node.file, node.line, f"Invalid tunnel option {option}")
    if (tun_type == "gue") != bool(port):
        raise _fail(node.file, node.line, "gue tunnels require port, otherwise cannot have port.")
    if tun_type == "ipip" and csum != "nocsum":
        raise _fail(node.file, node.line, "ipip tunnels do not support checksum option.")
    if tun_type == "gre" and csum == "remcsum":
        raise _fail(node.file, node.line, "gre tunnels do not support remote checksum option.")
    if word != "TUN" or len(node.args) == 1:
        return METHODS[word], []
    tunnel = ["--tun-type", tun_type] + (["--tun-port", port] if port else [])
    return METHODS[word], tunnel + ([] if tun_type == "ipip" else [f"--tun-{csum}"])


def _vs_method(vs: Node) -> str:
    """The virtual server's lb_kind as ipvsadm's switch (NAT when not given)."""
    for node in vs.blocks():
        if node.keyword in ("lb_kind", "lvs_method") and node.children is None:
            return _lb_kind(node)[0]
    return "-m"


def _virtual_server(vs: Node, out: Translation) -> None:
    settings = {n.keyword: n for n in vs.blocks() if n.children is None}
    protocol = _one(settings["protocol"])[0].upper() if "protocol" in settings else "TCP"
    if protocol not in ("TCP", "UDP"):
        out.untranslated.append(f"{settings['protocol'].where}: protocol {protocol}")
        return
    service = _service_words(vs, protocol, _vs_method(vs), out)
    if service is None:
        out.untranslated.append(f"{vs.where}: virtual_server {' '.join(vs.args)}")
        return
    add = ["add-service", *service]
    method = "-m"
    tunnel: list[str] = []  # lb_kind TUN's tunnel options, for its real servers
    interval: str | None = None
    on_failure = "remove"  # keepalived removes a failed real server unless inhibit_on_failure
    policy: list[str] = []
    host = ""
    for node in vs.blocks():
        key = node.keyword
        if node.children is not None:
            if key != "real_server":
                out.untranslated.append(f"{node.where}: {key} block")
            continue
        if key in ("lb_algo", "lvs_sched"):
            sched = _one(node)[0]
            if sched not in SCHEDULERS:
                out.untranslated.append(f"{node.where}: {key} {sched}")
            add += ["-s", sched]
        elif key in ("lb_kind", "lvs_method"):
            method, tunnel = _lb_kind(node)
        elif key == "persistence_timeout":
            add += ["-p", str(_int(node))]
        elif key == "persistence_granularity":
            add += ["-M", _one(node)[0]]
        elif key == "delay_loop":
            interval = _seconds(node)
        elif key == "inhibit_on_failure":
            on_failure = "quiesce"
        elif key == "sorry_server":
            addr, port = _one(node, 2)
            policy += ["--sorry-server", _addr_port(addr, port)]
        elif key == "sorry_server_lvs_method":
            word = _one(node)[0].upper()
            if word not in METHODS:
                raise _fail(node.file, node.line, f"{key}: NAT, DR or TUN, not {word}")
            policy += [METHODS[word]]
        elif key in ("quorum", "hysteresis"):
            policy += [f"--{key}", str(_int(node))]
        elif key in ("quorum_up", "quorum_down"):
            policy += [f"--{key.replace('_', '-')}", " ".join(node.args)]
        elif key == "virtualhost":
            host = _one(node)[0]
        elif key in ("protocol", "alpha", "omega", "ha_suspend", "ip_family"):
            if key in ("omega", "ha_suspend"):
                out.untranslated.append(f"{node.where}: {key}")
        else:
            out.untranslated.append(f"{node.where}: {key}")
    out.commands.append((vs.where, add))
    if policy:
        if "--sorry-server" in policy and not any(m in policy for m in METHODS.values()):
            policy.append(method)
        out.commands.append((vs.where, ["set-health", *service, *policy]))
    for rs in vs.blocks():
        if rs.keyword == "real_server" and rs.children is not None:
            _real_server(rs, service, [method, *tunnel], interval, on_failure, host, out)


def _service_family(service: list[str]) -> int:
    """The family of a translated service: ``-f N -6`` or the VIP's."""
    if service[0] == "-f":
        return 6 if service[-1] == "-6" else 4
    return 6 if service[1].startswith("[") else 4


def _real_server(
    rs: Node,
    service: list[str],
    forwarding: list[str],
    interval: str | None,
    on_failure: str,
    host: str,
    out: Translation,
) -> None:
    """One real_server block; ``forwarding``: its virtual server's switch and tunnel
    options, which an lb_kind of its own replaces (rs_forwarding_handler)."""
    for node in rs.blocks():
        if node.keyword in ("lb_kind", "lvs_method") and node.children is None:
            method, tunnel = _lb_kind(node)
            forwarding = [method, *tunnel]
    method = forwarding[0]
    if len(rs.args) != 2:
        raise _fail(rs.file, rs.line, "real_server takes an address and a port")
    if method != "-i" and _family(rs.args[0]) != _service_family(service):
        # check_parser.c rs_end_handler: only a tunnelled real server may differ.
        out.untranslated.append(
            f"{rs.where}: real_server {rs.args[0]}: address family of virtual server and "
            "real server don't match (keepalived skips it)"
        )
        return
    server = ["-r", _addr_port(*rs.args)]
    add = ["add-server", *service, *server, *forwarding]
    checks: list[Node] = []
    for node in rs.blocks():
        key = node.keyword
        if key in CHECKERS and node.children is not None:
            checks.append(node)
        elif key == "weight":
            add += ["-w", str(_int(node))]
        elif key == "uthreshold":
            add += ["-x", str(_int(node))]
        elif key == "lthreshold":
            add += ["-y", str(_int(node))]
        elif key == "inhibit_on_failure":
            on_failure = "quiesce"
        elif key == "delay_loop":
            interval = _seconds(node)
        elif key not in ("lb_kind", "lvs_method"):
            out.untranslated.append(f"{node.where}: {key}")
    out.commands.append((rs.where, add))
    for extra in checks[1:]:
        out.untranslated.append(f"{extra.where}: a second checker ({extra.keyword})")
    if checks:
        check = ["add-check", *service, *server, "--on-failure", on_failure]
        if interval is not None:
            check += ["--interval", interval]
        if host:
            check += ["--host", host]
        out.commands.append((checks[0].where, check + _checker(checks[0], out)))


def _checker(node: Node, out: Translation) -> list[str]:
    words = ["--type", CHECKERS[node.keyword]]
    urls = [n for n in node.blocks() if n.keyword == "url"]
    for child in node.blocks():
        key = child.keyword
        if key == "url":
            continue
        if key in ("connect_port",):
            words += ["--port", str(_int(child))]
        elif key in ("connect_timeout", "misc_timeout"):
            words += ["--timeout", _seconds(child)]
        elif key in ("retry", "nb_get_retry"):
            words += ["--retry", str(_int(child))]
        elif key == "delay_before_retry":
            words += ["--retry-delay", _seconds(child)]
        elif key == "warmup":
            words += ["--warmup", _seconds(child)]
        elif key == "misc_path":
            words += ["--command", " ".join(child.args)]
        elif key == "virtualhost":
            words += ["--host", _one(child)[0]]
        else:
            out.untranslated.append(f"{child.where}: {node.keyword} {key}")
    for extra in urls[1:]:
        out.untranslated.append(f"{extra.where}: a second url (one is checked)")
    if urls:
        for child in urls[0].blocks():
            if child.keyword == "path":
                words += ["--path", _one(child)[0]]
            elif child.keyword == "digest":
                words += ["--digest", _one(child)[0]]
            elif child.keyword == "status_code":
                words += ["--status", ",".join(child.args)]
            else:
                out.untranslated.append(f"{child.where}: url {child.keyword}")
    elif node.keyword in ("HTTP_GET", "SSL_GET"):
        raise _fail(node.file, node.line, f"{node.keyword} without a url block")
    return words


# --- output ---------------------------------------------------------------------------


def as_commands(result: Translation) -> str:
    """The dirctl commands, one per line, as --dry-run prints them."""
    return "".join(f"dirctl {shlex.join(argv)}\n" for _, argv in result.commands)


def build_config(result: Translation, base: Config | None = None) -> Config:
    """Apply the translation to ``base`` (empty: check it alone), all or nothing;
    ConfigError names the keepalived file and line a bad command came from."""
    config = base or Config()
    for where, argv in result.commands:
        verb, words = argv[0], argv[1:]
        if verb == "start-daemon":  # not the rules': checked by translate
            continue
        try:
            if verb == "set-timeout":
                config = apply(config, parse_args(["--set", *words]))
            elif verb in ("add-check", "set-health"):
                config = apply_health(config, parse_words(verb, words))
            else:
                config = apply(config, parse_args([f"--{verb}", *words]))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return config


def as_rules(result: Translation) -> str:
    """The translation as a rules file (ipvsadm-save lines and # director- lines)."""
    return format_save(build_config(result))
