"""Conntrack timeout policies (nfnetlink_cttimeout) for the kernel fast path: what
``ipvsadm --set tcp tcpfin udp`` (``dirctl set-timeout``) becomes for the connections
conntrack carries, without touching the host's nf_conntrack_*_timeout sysctls.

A policy is a named set of per-state timeouts for one L3 and one L4 protocol, kept in
the network namespace that made it.  The raw table's ``-j CT --timeout NAME`` rule
(iptables/director-fast.rules) attaches it to a connection when conntrack creates the
entry (nf_ct_set_timeout puts it on the rule's template, init_conntrack copies the
template's timeout extension): that entry's timeouts are the policy's from then on
(nf_ct_timeout_lookup, read at every packet by the protocol's packet handler).

- ``policies``: the policies of director's three figures (IPVS's mapping onto
  conntrack's states: see ``TCP_STATES`` and ``UDP_STATES``).
- ``CtTimeouts``: IPCTNL_MSG_TIMEOUT_NEW with NLM_F_CREATE | NLM_F_REPLACE, which
  cttimeout_new_timeout (net/netfilter/nfnetlink_cttimeout.c) answers by creating the
  policy, or by parsing the new figures into the one of that name in place (the same
  L3 and L4 protocol, else EINVAL).  In place means every entry already attached to it
  takes the new figures at its next packet, as a new one does at its first.  DELETE of
  a name (ENOENT when there is none; EBUSY, on kernels that refuse it, while a rule's
  template still holds it), GET of a name or of all (NLM_F_DUMP).

Of the TCP and UDP states a policy does not name, tcp_timeout_nlattr_to_obj and
udp_timeout_nlattr_to_obj (nf_conntrack_proto_{tcp,udp}.c) first copy the namespace's
own timeouts (nf_tcp_pernet / nf_udp_pernet: the sysctls' values at that moment), so
they stay conntrack's.  On the wire (linux/netfilter/nfnetlink_cttimeout.h):
CTA_TIMEOUT_NAME (NUL-terminated, at most CTNL_TIMEOUT_NAME_MAX - 1 = 31 bytes),
CTA_TIMEOUT_L3PROTO (be16), CTA_TIMEOUT_L4PROTO (u8), CTA_TIMEOUT_DATA (nested: be32
seconds per state attribute), CTA_TIMEOUT_USE (be32, in answers: the references).
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass

from director.model.config import Timeouts
from director.shell.conntrack import (
    _BE16,
    _BE32,
    _HEAD,
    _U8,
    DUMP_RECV_SIZE,
    NLA_F_NESTED,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    REQUEST_TIMEOUT,
    _attr,
    _attrs,
    _raise,
    _request,
    _socket,
    messages,
)

# linux/netfilter/nfnetlink.h, nfnetlink_cttimeout.h
NFNL_SUBSYS_CTNETLINK_TIMEOUT = 8
IPCTNL_MSG_TIMEOUT_NEW = 0
IPCTNL_MSG_TIMEOUT_GET = 1
IPCTNL_MSG_TIMEOUT_DELETE = 2
TIMEOUT_NEW_TYPE = NFNL_SUBSYS_CTNETLINK_TIMEOUT << 8 | IPCTNL_MSG_TIMEOUT_NEW
TIMEOUT_GET_TYPE = NFNL_SUBSYS_CTNETLINK_TIMEOUT << 8 | IPCTNL_MSG_TIMEOUT_GET
TIMEOUT_DELETE_TYPE = NFNL_SUBSYS_CTNETLINK_TIMEOUT << 8 | IPCTNL_MSG_TIMEOUT_DELETE
CTA_TIMEOUT_NAME = 1
CTA_TIMEOUT_L3PROTO = 2
CTA_TIMEOUT_L4PROTO = 3
CTA_TIMEOUT_DATA = 4
CTA_TIMEOUT_USE = 5
CTNL_TIMEOUT_NAME_MAX = 32
NLM_F_REPLACE = 0x100  # linux/netlink.h

# enum ctattr_timeout_tcp, by conntrack's state name (tcp_conntrack_names).
CTA_TIMEOUT_TCP = {
    "SYN_SENT": 1, "SYN_RECV": 2, "ESTABLISHED": 3, "FIN_WAIT": 4, "CLOSE_WAIT": 5,
    "LAST_ACK": 6, "TIME_WAIT": 7, "CLOSE": 8, "SYN_SENT2": 9, "RETRANS": 10, "UNACK": 11,
}  # fmt: skip
# enum ctattr_timeout_udp
CTA_TIMEOUT_UDP = {"UNREPLIED": 1, "REPLIED": 2}
STATE_ATTRS: dict[int, dict[str, int]] = {
    socket.IPPROTO_TCP: CTA_TIMEOUT_TCP,
    socket.IPPROTO_UDP: CTA_TIMEOUT_UDP,
}

# The policies' names (the CT rules of director-fast.rules name them).
TCP_POLICY = "director-tcp"
UDP_POLICY = "director-udp"

# Which of ipvsadm --set's figures (director.model.config.Timeouts) each conntrack state
# takes.  IPVS's ESTABLISHED is conntrack's.  IPVS's FIN_WAIT (ip_vs_proto_tcp.c
# tcp_states: the real server closed first, until the client's FIN) is, in conntrack
# (tcp_conntracks[]), FIN_WAIT until that FIN is acknowledged and then CLOSE_WAIT;
# conntrack does not tell which side closed, and IPVS's own CLOSE_WAIT (the client closed
# first) is not a --set figure: CLOSE_WAIT, LAST_ACK, TIME_WAIT and the rest keep
# conntrack's.  IPVS has one UDP state (IP_VS_UDP_S_NORMAL) from the first packet on:
# both of conntrack's, unreplied and replied (udp_packet: a flow answered within 2 s is
# still on the unreplied timeout), take it.
TCP_STATES = {"ESTABLISHED": "tcp", "FIN_WAIT": "tcpfin"}
UDP_STATES = {"UNREPLIED": "udp", "REPLIED": "udp"}

# Conntrack keeps an entry's expiry in u32 jiffies and reads a difference of more than
# INT_MAX as expired (nf_ct_is_expired): IPVS refuses such figures (ip_vs_set_timeout:
# INT_MAX / HZ), ipvsadm only checks 31 days.  Seconds above this bound (INT_MAX jiffies
# at HZ=1000, the highest HZ) are given to conntrack as the bound.
MAX_SECONDS = 0x7FFFFFFF // 1000

DELETE_TRIES = 50  # a rule's template may let go of its policy a little after the rule
DELETE_PAUSE = 0.02  # seconds between two tries (iptables-nft destroys rules deferred)


@dataclass(frozen=True, slots=True)
class Policy:
    """One timeout policy: ``timeouts`` is {state attribute number: seconds}; ``use``
    the kernel's reference count (answers only)."""

    name: str
    l3proto: int
    l4proto: int
    timeouts: Mapping[int, int]
    use: int | None = None


def policies(timeouts: Timeouts) -> list[Policy]:
    """The fast path's policies for ipvsadm --set's ``timeouts`` (IPv4: the fast
    services' family)."""
    made = []
    for name, proto, states in ((TCP_POLICY, socket.IPPROTO_TCP, TCP_STATES),
                                (UDP_POLICY, socket.IPPROTO_UDP, UDP_STATES)):  # fmt: skip
        attrs = STATE_ATTRS[proto]
        data = {attrs[state]: min(getattr(timeouts, field), MAX_SECONDS)
                for state, field in states.items()}  # fmt: skip
        made.append(Policy(name, socket.AF_INET, proto, data))
    return made


def _name(name: str) -> bytes:
    raw = name.encode() + b"\0"
    if len(raw) > CTNL_TIMEOUT_NAME_MAX:
        raise ValueError(f"timeout policy name {name!r} is too long")
    return _attr(CTA_TIMEOUT_NAME, raw)


def policy_attrs(policy: Policy) -> bytes:
    """CTA_TIMEOUT_NAME, _L3PROTO, _L4PROTO and the nested _DATA, as
    cttimeout_new_timeout reads them (states in attribute order)."""
    data = b"".join(
        _attr(kind, _BE32.pack(seconds)) for kind, seconds in sorted(policy.timeouts.items())
    )
    return (
        _name(policy.name)
        + _attr(CTA_TIMEOUT_L3PROTO, _BE16.pack(policy.l3proto))
        + _attr(CTA_TIMEOUT_L4PROTO, _U8.pack(policy.l4proto))
        + _attr(CTA_TIMEOUT_DATA | NLA_F_NESTED, data)
    )


def set_request(policy: Policy, seq: int) -> bytes:
    """IPCTNL_MSG_TIMEOUT_NEW: create the policy, or update the one of its name."""
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
    return _request(TIMEOUT_NEW_TYPE, flags, seq, socket.AF_UNSPEC, policy_attrs(policy))


def delete_request(name: str, seq: int) -> bytes:
    """IPCTNL_MSG_TIMEOUT_DELETE of one policy by name."""
    return _request(TIMEOUT_DELETE_TYPE, NLM_F_REQUEST | NLM_F_ACK, seq, socket.AF_UNSPEC,
                    _name(name))  # fmt: skip


def get_request(name: str | None, seq: int) -> bytes:
    """IPCTNL_MSG_TIMEOUT_GET of one policy, or of all (NLM_F_DUMP) for None."""
    if name is None:
        return _request(TIMEOUT_GET_TYPE, NLM_F_REQUEST | NLM_F_DUMP, seq, socket.AF_UNSPEC, b"")
    return _request(TIMEOUT_GET_TYPE, NLM_F_REQUEST | NLM_F_ACK, seq, socket.AF_UNSPEC,
                    _name(name))  # fmt: skip


def parse_policy(buf: bytes | bytearray | memoryview, at: int, end: int) -> Policy:
    """A policy as ctnl_timeout_fill_info sends it; ValueError if it is malformed."""
    if end - at < _HEAD:
        raise ValueError("short cttimeout message")
    top = _attrs(buf, at + _HEAD, end)
    try:
        name = bytes(buf[slice(*top[CTA_TIMEOUT_NAME])]).split(b"\0", 1)[0].decode()
        (l3proto,) = _BE16.unpack_from(buf, top[CTA_TIMEOUT_L3PROTO][0])
        (l4proto,) = _U8.unpack_from(buf, top[CTA_TIMEOUT_L4PROTO][0])
        data = _attrs(buf, *top[CTA_TIMEOUT_DATA])
    except (KeyError, struct.error, UnicodeDecodeError):
        raise ValueError("cttimeout message without name, protocols or data") from None
    timeouts = {kind: _BE32.unpack_from(buf, start)[0] for kind, (start, _) in data.items()}
    use = top.get(CTA_TIMEOUT_USE)
    return Policy(name, l3proto, l4proto, timeouts,
                  _BE32.unpack_from(buf, use[0])[0] if use else None)  # fmt: skip


class CtTimeouts:
    """Requests to the timeout policies of the network namespace of the thread that
    makes it, answered in turn (a blocking socket with a timeout).  The kernel's
    refusal, or no answer in time, raises OSError."""

    def __init__(self, timeout: float = REQUEST_TIMEOUT) -> None:
        self.sock = _socket()
        try:
            self.sock.settimeout(timeout)
            self.sock.bind((0, 0))
        except BaseException:
            self.sock.close()
            raise
        self.seq = 0
        self._buf = bytearray(DUMP_RECV_SIZE)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> CtTimeouts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set(self, policy: Policy) -> None:
        """Create ``policy``, or give the one of its name its figures."""
        self._answers(set_request(policy, self._next()), "set")

    def delete(self, name: str, tries: int = DELETE_TRIES) -> bool:
        """Delete the policy ``name``; False if there was none.  EBUSY (a rule's
        template still holds it, the rule being gone or going) is tried again, up to
        ``tries`` times in all."""
        for attempt in range(tries):
            try:
                self._answers(delete_request(name, self._next()), "delete")
            except FileNotFoundError:
                return False
            except OSError as err:
                if err.errno != errno.EBUSY or attempt == tries - 1:
                    raise
                time.sleep(DELETE_PAUSE)
                continue
            return True
        return False  # tries < 1

    def get(self, name: str) -> Policy | None:
        """The policy ``name``, None if there is none."""
        try:
            found = self._answers(get_request(name, self._next()), "get")
        except FileNotFoundError:
            return None
        return found[0] if found else None

    def dump(self) -> list[Policy]:
        """Every policy of the namespace."""
        return self._answers(get_request(None, self._next()), "dump")

    def _next(self) -> int:
        self.seq = self.seq % 0xFFFFFFFF + 1
        return self.seq

    def _answers(self, request: bytes, what: str) -> list[Policy]:
        """Send ``request``; the policies answered until its acknowledgement or the end
        of its dump."""
        (seq,) = struct.unpack_from("=I", request, 8)
        self.sock.send(request)
        got: list[Policy] = []
        view = memoryview(self._buf)
        while True:
            size = self.sock.recv_into(self._buf)
            for msg_type, _, msg_seq, start, end in messages(view, size):
                if msg_seq != seq:
                    continue
                if msg_type == NLMSG_ERROR:
                    _raise(view, start, end, f"timeout policy {what}")
                    return got
                if msg_type == NLMSG_DONE:
                    return got
                if msg_type == TIMEOUT_NEW_TYPE:
                    got.append(parse_policy(view, start, end))
