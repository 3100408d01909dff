"""The sync daemon's options as ipvsadm's --start-daemon spells them, shared by
``dirctl start-daemon`` and ``dirctl vrrp-notify`` (values are checked by
director.model.sync.parse_daemon, so each stays a string here)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

McastInterface = Annotated[
    str | None, typer.Option("--mcast-interface", metavar="IF", help="multicast interface")
]
SyncId = Annotated[
    str | None, typer.Option("--syncid", metavar="N", help="sync id, 0-255 (default 0)")
]
SyncMaxlen = Annotated[
    str | None, typer.Option("--sync-maxlen", metavar="N", help="max sync message length")
]
McastGroup = Annotated[
    str | None, typer.Option("--mcast-group", metavar="ADDR", help="group (224.0.0.81)")
]
McastPort = Annotated[str | None, typer.Option("--mcast-port", metavar="N", help="UDP port (8848)")]
McastTtl = Annotated[str | None, typer.Option("--mcast-ttl", metavar="N", help="multicast TTL (1)")]


def given(**options: str | None) -> dict[str, Any]:
    """The options given, by parse_daemon's names (mcast_interface is mcast_ifn)."""
    named = {("mcast_ifn" if key == "mcast_interface" else key): value
             for key, value in options.items()}  # fmt: skip
    return {key: value for key, value in named.items() if value is not None}
