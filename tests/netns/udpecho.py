"""A UDP echo for the netns tests (stdlib only), run in a lab namespace.

``udpecho.py serve --port P --seconds S`` echoes every datagram back to its sender
for S seconds; ``udpecho.py ask --to ADDR --port P --size N`` sends one datagram of
N random bytes with DF set (no fragmentation anywhere) and prints, as JSON, whether
the answer came back byte for byte.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

IP_MTU_DISCOVER = 10
IP_PMTUDISC_DO = 2


def serve(port: int, seconds: float) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        sock.bind(("", port))
        print("ready", file=sys.stderr, flush=True)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, peer = sock.recvfrom(1 << 16)
            except TimeoutError:
                break
            sock.sendto(data, peer)
    return 0


def ask(to: str, port: int, size: int, timeout: float) -> int:
    data = os.urandom(size)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        sock.settimeout(timeout)
        sock.sendto(data, (to, port))
        try:
            got, peer = sock.recvfrom(1 << 16)
        except TimeoutError:
            got, peer = b"", ("", 0)
    print(json.dumps({"sent": size, "got": len(got), "same": got == data, "from": peer[0]}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--seconds", type=float, default=30.0)
    a = sub.add_parser("ask")
    a.add_argument("--to", required=True)
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--size", type=int, required=True)
    a.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    if args.mode == "serve":
        return serve(args.port, args.seconds)
    return ask(args.to, args.port, args.size, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
