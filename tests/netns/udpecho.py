"""A UDP echo for the netns tests (stdlib only), run in a lab namespace.

``udpecho.py serve --port P --seconds S`` echoes every datagram back to its sender
for S seconds (with ``--digest``, answers the SHA-256 and length of each instead);
``udpecho.py ask --to ADDR --port P --size N`` sends one datagram of
N random bytes and prints, as JSON, whether the answer came back byte for byte.  Both
send with DF (no fragmentation anywhere), or with ``--fragments`` without it (a
datagram larger than the MTU leaves in fragments).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sys
import time

IP_MTU_DISCOVER = 10
IP_PMTUDISC_DONT = 0
IP_PMTUDISC_DO = 2


def serve(bind: str, port: int, seconds: float, df: int, digest: bool) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, df)
        sock.bind((bind, port))
        print("ready", file=sys.stderr, flush=True)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, peer = sock.recvfrom(1 << 16)
            except TimeoutError:
                break
            if digest:
                data = f"{hashlib.sha256(data).hexdigest()} {len(data)}".encode()
            sock.sendto(data, peer)
    return 0


def ask(to: str, port: int, size: int, timeout: float, df: int) -> int:
    data = os.urandom(size)
    digest = f"{hashlib.sha256(data).hexdigest()} {size}".encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, df)
        sock.settimeout(timeout)
        sock.sendto(data, (to, port))
        try:
            got, peer = sock.recvfrom(1 << 16)
        except TimeoutError:
            got, peer = b"", ("", 0)
    answer = {"sent": size, "got": len(got), "same": got == data, "from": peer[0]}
    answer["digest_same"] = got == digest
    print(json.dumps(answer))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--bind", default="", help="the address to answer from (DR: the VIP)")
    s.add_argument("--seconds", type=float, default=30.0)
    s.add_argument("--digest", action="store_true", help="answer SHA-256 and length")
    a = sub.add_parser("ask")
    a.add_argument("--to", required=True)
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--size", type=int, required=True)
    a.add_argument("--timeout", type=float, default=5.0)
    for mode in (s, a):
        mode.add_argument("--fragments", action="store_true", help="send without DF")
    args = parser.parse_args()
    df = IP_PMTUDISC_DONT if args.fragments else IP_PMTUDISC_DO
    if args.mode == "serve":
        return serve(args.bind, args.port, args.seconds, df, args.digest)
    return ask(args.to, args.port, args.size, args.timeout, df)


if __name__ == "__main__":
    sys.exit(main())
