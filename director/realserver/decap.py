"""The userspace IPIP decapsulator: raw tunnel sockets in, a TUN device out.

``dirctl realserver up --method tun`` starts it in the background where the kernel
has no ``ipip`` module::

    python -m director.realserver.decap --tun dirtun0 --vip 203.0.113.5

It reads every IPv4 packet of protocol 4 addressed to this host (a raw socket sees
them with their outer header; without an ``ipip`` handler the kernel sends no
protocol-unreachable once a raw socket took the packet), strips the outer header
(``director.realserver.ipip``) and writes the inner packet into the TUN device
(``IFF_TUN | IFF_NO_PI``), which carries the VIPs: the stack receives client->VIP
packets as if they had arrived there, and answers the client directly.

The IPv6 tunnels the same way, one raw socket each (``TUNNELS``): IPv6-in-IPv4
(protocol 41), and over IPv6 (the kernel has no ip6_tunnel here) IPv6-in-IPv6 and
IPv4-in-IPv6 (next header 41 and 4), whose sockets give the payload without the outer
header and its traffic class beside it (IPV6_RECVTCLASS).  The TUN device takes both
families without a packet-information header (tun_get_user reads the version
nibble).  A host without IPv6 decapsulates what IPv4 carries.

GUE and GRE (``--gue-port PORT``, ``--gre``: VS/TUN's ``--tun-type gue|gre``, for a
kernel without ``fou`` or ``gre``) come the same way: a UDP socket bound to the GUE
port (IPv4 and IPv6) gives each datagram's payload, a raw socket of protocol 47 per
family each GRE packet; director.realserver.gue strips their headers, and the inner
packet is checked and written as an IPIP one.

It prints ``ready`` on stdout once both ends are open, then logs only to stderr.
SIGTERM or SIGINT stop it (the handler only wakes the loop, ExaBGP-style); on the
way out it logs how many packets it passed (by tunnel: ``passed``, ``passed-gue``,
``passed-gre``) and refused, by reason.
"""

from __future__ import annotations

import argparse
import collections
import errno
import fcntl
import os
import select
import signal
import socket
import struct
import sys

from director.realserver import gue, ipip

# The raw sockets read, (family, protocol): what each carries inside.
TUNNELS: tuple[tuple[int, int], ...] = (
    (socket.AF_INET, ipip.IPPROTO_IPIP),  # IPv4 in IPv4
    (socket.AF_INET, ipip.IPPROTO_IPV6),  # IPv6 in IPv4
    (socket.AF_INET6, ipip.IPPROTO_IPV6),  # IPv6 in IPv6
    (socket.AF_INET6, ipip.IPPROTO_IPIP),  # IPv4 in IPv6
)
IPV6_RECVTCLASS = 66  # linux/in6.h
UDP_NO_CHECK6_RX = 102  # linux/udp.h: take IPv6 datagrams with a zero checksum
IPV6_TCLASS = 67
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
TUN_DEVICE = "/dev/net/tun"
RECV_BUFFER = 65536
SOCKET_BUFFER = 4 << 20


def open_tun(name: str, *, persist: bool | None = None) -> int:
    """Open (creating if need be) the TUN device ``name``; return its file descriptor.

    ``persist=True`` makes the device outlive this descriptor (``ip tuntap add``);
    ``persist=False`` makes it vanish with the last one.
    """
    fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
        if persist is not None:
            fcntl.ioctl(fd, TUNSETPERSIST, int(persist))
    except BaseException:
        os.close(fd)
        raise
    return fd


def run(
    tun: str, vips: frozenset[bytes], gue_ports: tuple[int, ...] = (), gre: bool = False
) -> collections.Counter[str]:
    """Decapsulate until SIGTERM/SIGINT; return the counters."""
    counts: collections.Counter[str] = collections.Counter()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    raws = open_tunnels() + open_gue(gue_ports) + (open_gre() if gre else [])
    tun_fd = open_tun(tun)
    os.set_blocking(tun_fd, False)
    print("ready", flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the parent stopped reading: nothing more goes to stdout
    os.close(devnull)

    buf = bytearray(RECV_BUFFER)
    view = memoryview(buf)
    try:
        while not stop:
            fds = [raw.fileno() for raw in raws]
            ready, _, _ = select.select([*fds, tun_fd, wake_r], [], [], 5.0)
            if wake_r in ready:
                _drain(wake_r)
            if tun_fd in ready:
                _drain(tun_fd)  # the host sends nothing useful to the device: discard
            for raw, fd in zip(raws, fds, strict=True):
                if fd in ready:
                    _relay(raw, tun_fd, view, vips, counts)
    finally:
        for raw in raws:
            raw.close()
        os.close(tun_fd)
        signal.set_wakeup_fd(-1)
        os.close(wake_r)
        os.close(wake_w)
    return counts


def open_tunnels() -> list[socket.socket]:
    """The raw socket of each of TUNNELS (the IPv6 ones only where the host has IPv6)."""
    return _open_raws(TUNNELS)


def _open_raws(kinds: tuple[tuple[int, int], ...]) -> list[socket.socket]:
    """A raw socket of each (family, protocol), non-blocking with a large buffer (the
    IPv6 ones with the traffic class of what they receive, for ECN); an IPv6 one the
    host cannot open is left out, an IPv4 one is an error."""
    raws: list[socket.socket] = []
    for family, proto in kinds:
        try:
            raw = socket.socket(family, socket.SOCK_RAW, proto)
        except OSError:
            if family == socket.AF_INET:
                for opened in raws:
                    opened.close()
                raise
            continue  # no IPv6 here
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        if family == socket.AF_INET6:
            raw.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVTCLASS, 1)
        raw.setblocking(False)
        raws.append(raw)
    return raws


def open_gue(ports: tuple[int, ...]) -> list[socket.socket]:
    """A UDP socket on each GUE port, IPv4 and IPv6 both where the host has IPv6."""
    socks: list[socket.socket] = []
    for port in ports:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            # --tun-nocsum sends a zero UDP checksum over IPv6 too (udp6_set_csum with
            # nocheck), which RFC 6935 allows tunnels and the socket must accept.
            sock.setsockopt(socket.IPPROTO_UDP, UDP_NO_CHECK6_RX, 1)
            sock.bind(("::", port))
        except OSError:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("0.0.0.0", port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        sock.setblocking(False)
        socks.append(sock)
    return socks


def open_gre() -> list[socket.socket]:
    """The raw sockets of protocol 47 (IPv6's only where the host has IPv6)."""
    return _open_raws(((socket.AF_INET, gue.IPPROTO_GRE), (socket.AF_INET6, gue.IPPROTO_GRE)))


def _receive(
    raw: socket.socket, view: memoryview, vips: frozenset[bytes]
) -> ipip.Inner | ipip.Refusal | None:
    """The next packet of ``raw`` decapsulated (None: nothing waits)."""
    if raw.type == socket.SOCK_DGRAM:  # GUE: the UDP payload
        try:
            size = raw.recv_into(view)
        except BlockingIOError:
            return None
        return gue.decapsulate_gue(view[:size], vips)
    if raw.family == socket.AF_INET and raw.proto == gue.IPPROTO_GRE:
        try:
            size = raw.recv_into(view)
        except BlockingIOError:
            return None
        return gue.decapsulate_gre(view[:size], vips)
    if raw.family == socket.AF_INET:
        try:
            size = raw.recv_into(view)
        except BlockingIOError:
            return None
        return ipip.decapsulate(view[:size], vips)
    try:
        size, ancillary, _, _ = raw.recvmsg_into([view], socket.CMSG_SPACE(4))
    except BlockingIOError:
        return None
    tclass = 0
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IPV6 and kind == IPV6_TCLASS and len(data) >= 4:
            tclass = int.from_bytes(data[:4], sys.byteorder)
    if raw.proto == gue.IPPROTO_GRE:
        return gue.decapsulate_gre6(view[:size], tclass, vips)
    return ipip.decapsulate6(view[:size], raw.proto, tclass, vips)


def _relay(
    raw: socket.socket,
    tun_fd: int,
    view: memoryview,
    vips: frozenset[bytes],
    counts: collections.Counter[str],
) -> None:
    """Decapsulate every packet queued on the raw socket now."""
    while True:
        result = _receive(raw, view, vips)
        if result is None:
            return
        if isinstance(result, ipip.Refusal):
            counts[result.value] += 1
            continue
        try:
            os.write(tun_fd, result.packet)
            counts[_passed(raw)] += 1
        except OSError as err:  # EIO while the device is down, EAGAIN when full
            counts[f"write-{errno.errorcode.get(err.errno or 0, 'error')}"] += 1


def _passed(raw: socket.socket) -> str:
    """The counter of what ``raw`` passed: ``passed`` (IPIP and the IPv6 tunnels),
    ``passed-gue``, ``passed-gre``."""
    if raw.type == socket.SOCK_DGRAM:
        return "passed-gue"
    return "passed-gre" if raw.proto == gue.IPPROTO_GRE else "passed"


def _drain(fd: int) -> None:
    while True:
        try:
            if not os.read(fd, RECV_BUFFER):
                return
        except (BlockingIOError, InterruptedError):
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="userspace IPIP and IPv6 tunnel decapsulator")
    parser.add_argument("--tun", required=True, help="TUN device carrying the VIPs")
    parser.add_argument("--vip", action="append", required=True, help="repeatable")
    parser.add_argument("--gue-port", action="append", type=int, default=[], help="repeatable")
    parser.add_argument("--gre", action="store_true", help="decapsulate GRE too")
    args = parser.parse_args(argv)
    try:
        vips = ipip.vip_set(args.vip)
        counts = run(args.tun, vips, tuple(args.gue_port), args.gre)
    except (OSError, ValueError) as err:
        print(f"decap: {err}", file=sys.stderr, flush=True)
        return 1
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no packets"
    print(f"decap {args.tun}: {summary}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
