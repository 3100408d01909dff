"""director-ipvsadm: ipvsadm 1.31's command line, spoken to directord.

``director-ipvsadm`` takes what ``ipvsadm`` takes (director.ctl.ipvsadm_cmdline parses
it) and does it through the daemon's control socket, as dirctl does
(``protocol.request``; the socket is ``$DIRECTOR_SOCKET`` or dirctl's default), printing
what ipvsadm prints: the ``-L`` layouts of director.ctl.listing, ``-S`` as ipvsadm-save
prints it (sorted as the list, no thresholds, no timeouts), host and service names
without ``-n`` (gethostbyaddr / getservbyport, as ipvsadm's addrport_to_anyname).
``director-ipvsadm-save`` is ``director-ipvsadm -S``, ``director-ipvsadm-restore`` is
``director-ipvsadm -R``.

Exit status as ipvsadm's: 0 done, 2 a bad command line (ipvsadm's own checks), 255
popt's errors and what the daemon refused (the kernel's part in ipvsadm), 1 ``-L`` of
a service that is not there.  A daemon that does not answer is ipvsadm's "Can't
initialize ipvs" (status 2).

``-R`` differs from ipvsadm on purpose: the whole input is parsed first and applied by
the daemon's restore at once, so a bad line, or one the daemon refuses, changes
nothing (ipvsadm applies the lines before it and, past a refused one, goes on).
"""

from __future__ import annotations

import functools
import os
import socket
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn, TextIO

from director.ctl import listing, protocol
from director.ctl.ipvsadm import METHOD_SWITCHES, _dest_line, _service_line, service_switch
from director.ctl.ipvsadm_cmdline import (
    DEF_MCAST_IFN,
    VERSION_LINE,
    Command,
    IpvsadmError,
    KernelRefused,
    Names,
    Unsupported,
    kernel_or_own,
    parse,
    usage,
)
from director.ctl.ops import (
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
)
from director.ctl.protocol import DEFAULT_SOCKET, DaemonFailed, DaemonUnreachable
from director.model.config import ConfigError, ServiceConf
from director.model.sync import parse_daemon

TIMEOUT = 10.0


# --- names (ipvsadm without -n) -------------------------------------------------------


class SystemNames:
    """host_to_addr and service_to_port (gethostbyname, getservbyname), for input."""

    def host_addr(self, name: str) -> str | None:
        try:
            return socket.gethostbyname(name)
        except (OSError, UnicodeError):
            return None

    def service_port(self, name: str, proto: str) -> int | None:
        try:
            return socket.getservbyname(name, proto)
        except (OSError, UnicodeError):
            return None


@functools.lru_cache(maxsize=4096)
def _host_name(addr: str) -> str:
    """addr_to_anyname: the reverse lookup's name, else the address."""
    try:
        return socket.gethostbyaddr(addr)[0]
    except (OSError, UnicodeError):
        return addr


@functools.lru_cache(maxsize=4096)
def _port_name(port: int, proto: str) -> str:
    """port_to_anyname: /etc/services' name of the port, else the number."""
    try:
        return socket.getservbyport(port, proto)
    except (OSError, OverflowError):
        return str(port)


def any_name(addr: str, port: int, proto: str) -> str:
    """addrport_to_anyname without FMT_NUMERIC: ``host:service``, ``[host]:service``."""
    host = _host_name(addr)
    text = f"[{host}]" if ":" in addr else host
    return f"{text}:{_port_name(port, proto)}"


# --- talking to the daemon -------------------------------------------------------------


class Shell:
    def __init__(self, socket_path: str, out: TextIO, err: TextIO) -> None:
        self.socket_path = socket_path
        self.out = out
        self.err = err

    def ask(self, command: str, args: dict[str, Any] | None = None) -> Any:
        """One request; a refusal is the kernel's (status 255, ipvsadm's words)."""
        try:
            return protocol.request(self.socket_path, command, args or {}, TIMEOUT)
        except protocol.RequestRefused as exc:
            raise KernelRefused(kernel_or_own(str(exc)).message) from None

    def conn_pages(self) -> Iterator[Any]:
        offset = 0
        while True:
            page = self.ask("list", {"conns": True, "offset": offset})
            yield page
            following = page.get("conns_next")
            if not isinstance(following, int) or following <= offset:
                return
            offset = following


def _format(cmd: Command) -> listing.ListFormat:
    return listing.ListFormat(
        stats=cmd.has("stats"),
        rate=cmd.has("rate"),
        thresholds=cmd.has("thresholds"),
        persistent_conn=cmd.has("persistent-conn"),
        exact=cmd.has("exact"),
        tun_info=cmd.has("tun-info"),
        nosort=cmd.has("nosort"),
        names=None if cmd.numeric else any_name,
    )


def _list(shell: Shell, cmd: Command) -> int:
    """list_conn, list_service, list_timeout, list_daemon or list_all."""
    fmt = _format(cmd)
    if cmd.has("connection"):
        for number, page in enumerate(shell.conn_pages()):
            text = listing.format_conns(
                page,
                header=number == 0,
                persistent=cmd.has("persistent-conn"),
                names=fmt.names,
            )
            shell.out.write(text)
        return 0
    if cmd.has("daemon"):
        shell.out.write(listing.format_daemon(shell.ask("daemon")))
        return 0
    snapshot = shell.ask("list", {"conns": False})
    if cmd.key is not None:
        service = listing.find_service(snapshot, cmd.key)
        if service is None:
            raise IpvsadmError("No such service", 1)
        shell.out.write(listing.format_list(snapshot, fmt, service))
    elif cmd.has("timeout"):
        shell.out.write(listing.format_timeout(snapshot))
    else:
        shell.out.write(listing.format_list(snapshot, fmt))
    return 0


def _save(shell: Shell, cmd: Command) -> int:
    snapshot = shell.ask("list", {"conns": False})
    shell.out.write(listing.format_rules(snapshot, None if cmd.numeric else any_name))
    return 0


def _start_daemon(shell: Shell, cmd: Command) -> int:
    args = {"mcast_ifn": DEF_MCAST_IFN, **cmd.daemon}
    try:
        conf = parse_daemon(args)
    except ConfigError as exc:
        raise IpvsadmError(str(exc), 2) from None
    shell.ask("start-daemon", conf.as_dict())
    return 0


def _change(shell: Shell, cmd: Command) -> int:
    assert cmd.op is not None
    name, args = protocol.encode_op(cmd.op)
    shell.ask(name, args)
    return 0


def _stop_daemon(shell: Shell, cmd: Command) -> int:
    shell.ask("stop-daemon", {"state": cmd.daemon["state"]})
    return 0


def _zero(shell: Shell, cmd: Command) -> int:
    shell.ask("zero", {"service": list(cmd.key) if cmd.key else None})
    return 0


# --- restore ---------------------------------------------------------------------------


def _stub(key: ServiceKey) -> ServiceConf:
    proto, addr, number = key
    if proto == "fwm":
        return ServiceConf(protocol="fwm", addr=addr, fwmark=number)
    return ServiceConf(protocol=proto, addr=addr, port=number)


def _addr_port(addr: str, port: int) -> str:
    return listing.addr_port(addr, port)


def op_line(op: Op) -> str:
    """An operation as the line of the daemon's restore file (director.ctl.ipvsadm's
    save format), so what ipvsadm's command line said is what the daemon applies."""
    if isinstance(op, AddService | EditService):
        line = _service_line(op.service)
        return line if isinstance(op, AddService) else "-E" + line[2:]
    if isinstance(op, DeleteService):
        return f"-D {service_switch(_stub(op.key))}"
    if isinstance(op, AddServer):
        return _dest_line(_stub(op.key), op.dest)
    if isinstance(op, EditServer):
        words = [f"-e {service_switch(_stub(op.key))} -r {_addr_port(op.addr, op.port)}"]
        if op.method is not None:
            words.append(METHOD_SWITCHES[op.method])
        for switch, value in (("-w", op.weight), ("-x", op.u_threshold), ("-y", op.l_threshold)):
            if value is not None:
                words.append(f"{switch} {value}")
        if op.tun_type is not None:
            words.append(f"--tun-type {op.tun_type}")
        if op.tun_port is not None:
            words.append(f"--tun-port {op.tun_port}")
        if op.tun_flags is not None:
            words.append(f"--tun-{op.tun_flags}")
        return " ".join(words)
    if isinstance(op, DeleteServer):
        return f"-d {service_switch(_stub(op.key))} -r {_addr_port(op.addr, op.port)}"
    if isinstance(op, Clear):
        return "-C"
    assert isinstance(op, SetTimeout)
    return f"--set {op.tcp} {op.tcpfin} {op.udp}"


def restore_words(line: str) -> list[str]:
    """config_stream_read's words of one line: split at spaces, tabs and CRs (no
    quoting), a word ``ipvsadm`` dropped, nothing from a ``#`` on (its stated rule)."""
    return [word for word in line.split("#", 1)[0].split() if word != "ipvsadm"]


def restore_text(text: str, prog: str, names: Names) -> str:
    """Every line of an ipvsadm -R input parsed as ipvsadm's command line, as the
    daemon's restore text; IpvsadmError for the first bad line (nothing applied).
    director's own ``# director-check`` / ``# director-health`` lines (dirctl save
    --checks) go to the daemon as they are."""
    lines: list[str] = []
    for line in text.splitlines():
        if line.strip().startswith("# director-"):
            lines.append(line.strip())
            continue
        words = restore_words(line)
        if not words:
            continue
        cmd = parse(words, prog=prog, names=names)
        if cmd.command == "restore":  # restore_table: "avoid infinite loop"
            raise IpvsadmError(f"Try `{prog} -h' or '{prog} --help' for more information.", 255)
        if cmd.op is None:
            raise Unsupported(
                f"{cmd.command}: only commands that change the table can be restored by {prog} -R"
            )
        lines.append(op_line(cmd.op))
    return "".join(f"{line}\n" for line in lines)


def _restore(shell: Shell, cmd: Command, stdin: TextIO, prog: str) -> int:
    text = restore_text(stdin.read(), prog, SystemNames())
    if not text:
        return 0
    try:
        protocol.request(shell.socket_path, "restore", {"text": text}, TIMEOUT)
    except protocol.RequestRefused as exc:
        message = str(exc)
        if message.startswith("line ") and ": " in message:
            message = message.split(": ", 1)[1]
        raise KernelRefused(kernel_or_own(message).message) from None
    return 0


# --- entry points ------------------------------------------------------------------------


def run(
    argv: Sequence[str],
    *,
    prog: str = "ipvsadm",
    stdin: TextIO | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    socket_path: str | None = None,
) -> int:
    """Run one ipvsadm command line (without the program name); its exit status."""
    stdin, out, err = stdin or sys.stdin, out or sys.stdout, err or sys.stderr
    path = socket_path or os.environ.get("DIRECTOR_SOCKET") or DEFAULT_SOCKET
    shell = Shell(path, out, err)
    try:
        cmd = parse(argv, prog=prog, names=SystemNames())
        if cmd.command == "help":
            out.write(usage(prog))
            return 0
        if cmd.command == "version":
            out.write(VERSION_LINE + "\n")
            return 0
        handlers = {
            "list": _list,
            "save": _save,
            "zero": _zero,
            "start-daemon": _start_daemon,
            "stop-daemon": _stop_daemon,
        }
        if cmd.command == "restore":
            return _restore(shell, cmd, stdin, prog)
        handler = handlers.get(cmd.command, _change)
        return int(handler(shell, cmd))
    except IpvsadmError as exc:
        err.write(exc.message + "\n")
        return exc.status
    except DaemonUnreachable as exc:
        err.write(f"Can't initialize ipvs: {exc}\n")
        return 2
    except DaemonFailed as exc:
        err.write(f"directord failed: {exc}\n")
        return 255
    except BrokenPipeError:
        return 1


def _prog() -> str:
    return os.path.basename(sys.argv[0]) or "ipvsadm"


def main() -> NoReturn:
    """Console script ``director-ipvsadm``."""
    sys.exit(run(sys.argv[1:], prog=_prog()))


def save_main() -> NoReturn:
    """Console script ``director-ipvsadm-save`` (ipvsadm-save: ``ipvsadm -S [-n]``)."""
    sys.exit(run(["-S", *sys.argv[1:]], prog=_prog()))


def restore_main() -> NoReturn:
    """Console script ``director-ipvsadm-restore`` (ipvsadm-restore: ``ipvsadm -R``)."""
    sys.exit(run(["-R", *sys.argv[1:]], prog=_prog()))
