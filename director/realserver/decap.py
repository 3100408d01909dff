"""The userspace IPIP decapsulator: a raw IPIP socket in, a TUN device out.

``dirctl realserver up --method tun`` starts it in the background where the kernel
has no ``ipip`` module::

    python -m director.realserver.decap --tun dirtun0 --vip 203.0.113.5

It reads every IPv4 packet of protocol 4 addressed to this host (a raw socket sees
them with their outer header; without an ``ipip`` handler the kernel sends no
protocol-unreachable once a raw socket took the packet), strips the outer header
(``director.realserver.ipip``) and writes the inner packet into the TUN device
(``IFF_TUN | IFF_NO_PI``), which carries the VIPs: the stack receives client->VIP
packets as if they had arrived there, and answers the client directly.

It prints ``ready`` on stdout once both ends are open, then logs only to stderr.
SIGTERM or SIGINT stop it (the handler only wakes the loop, ExaBGP-style); on the
way out it logs how many packets it passed and refused, by reason.
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

from director.realserver import ipip

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


def run(tun: str, vips: frozenset[bytes]) -> collections.Counter[str]:
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

    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, ipip.IPPROTO_IPIP)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    raw.setblocking(False)
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
            ready, _, _ = select.select([raw.fileno(), tun_fd, wake_r], [], [], 5.0)
            if wake_r in ready:
                _drain(wake_r)
            if tun_fd in ready:
                _drain(tun_fd)  # the host sends nothing useful to the device: discard
            if raw.fileno() in ready:
                _relay(raw, tun_fd, view, vips, counts)
    finally:
        raw.close()
        os.close(tun_fd)
        signal.set_wakeup_fd(-1)
        os.close(wake_r)
        os.close(wake_w)
    return counts


def _relay(
    raw: socket.socket,
    tun_fd: int,
    view: memoryview,
    vips: frozenset[bytes],
    counts: collections.Counter[str],
) -> None:
    """Decapsulate every packet queued on the raw socket now."""
    while True:
        try:
            size = raw.recv_into(view)
        except BlockingIOError:
            return
        result = ipip.decapsulate(view[:size], vips)
        if isinstance(result, ipip.Refusal):
            counts[result.value] += 1
            continue
        try:
            os.write(tun_fd, result.packet)
            counts["passed"] += 1
        except OSError as err:  # EIO while the device is down, EAGAIN when full
            counts[f"write-{errno.errorcode.get(err.errno or 0, 'error')}"] += 1


def _drain(fd: int) -> None:
    while True:
        try:
            if not os.read(fd, RECV_BUFFER):
                return
        except (BlockingIOError, InterruptedError):
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="userspace IPIP decapsulator (root)")
    parser.add_argument("--tun", required=True, help="TUN device carrying the VIPs")
    parser.add_argument("--vip", action="append", required=True, help="repeatable")
    args = parser.parse_args(argv)
    try:
        vips = ipip.vip_set(args.vip)
        counts = run(args.tun, vips)
    except (OSError, ValueError) as err:
        print(f"decap: {err}", file=sys.stderr, flush=True)
        return 1
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no packets"
    print(f"decap {args.tun}: {summary}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
