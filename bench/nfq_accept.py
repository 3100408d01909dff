"""The benchmark's accept-only NFQUEUE worker: every packet queued to it is accepted
unchanged.

With kernel DNAT doing the NAT and a queue rule that sends it every packet of the
service both ways, what it reaches is the ceiling of any design where every packet
passes a userspace worker through NFQUEUE (issue 11): the packet copied up, one
Python callback, one verdict, and nothing else.  Like director's worker it takes the
whole packet (NetfilterQueue's default copy mode), so the two pay the same copy.

Run by ``bench/run.py`` inside the director namespace:
``python bench/nfq_accept.py --queue-num N``.  It says ``ready`` on stdout once the
queue is bound and ends on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType
from typing import Any

from netfilterqueue import NetfilterQueue


def accept(pkt: Any) -> None:
    pkt.accept()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--queue-num", type=int, required=True)
    parser.add_argument("--max-len", type=int, default=4096, help="packets the queue may hold")
    args = parser.parse_args(argv)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    nfq = NetfilterQueue()
    nfq.bind(args.queue_num, accept, max_len=args.max_len)
    print("ready", flush=True)
    try:
        nfq.run()
    except KeyboardInterrupt:
        pass
    finally:
        nfq.unbind()
    return 0


if __name__ == "__main__":
    sys.exit(main())
