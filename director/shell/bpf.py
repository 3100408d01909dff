"""Classic BPF socket filters (linux/filter.h): a program the kernel runs on every
message before it reaches a socket, so that what the reader does not want is never
queued, copied or woken for.

A program is a sequence of ``Insn`` (struct sock_filter: code, jt, jf, k) attached with
SO_ATTACH_FILTER.  On a netlink socket the kernel offers two extensions that find
attributes (net/core/filter.c, bpf_skb_get_nlattr and bpf_skb_get_nlattr_nest):
``A = nlattr(A, X)`` is the offset of the first attribute of type X among those that
start at offset A, ``A = nlattr_nest(A, X)`` the offset of the first attribute of type X
inside the nested attribute at offset A; 0 when there is none.  libnetfilter_conntrack
filters ctnetlink events with them.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Sequence
from typing import NamedTuple

# linux/bpf_common.h, linux/filter.h
BPF_LD, BPF_LDX, BPF_ALU, BPF_JMP, BPF_RET, BPF_MISC = 0x00, 0x01, 0x04, 0x05, 0x06, 0x07
BPF_W, BPF_B = 0x00, 0x10
BPF_IMM, BPF_ABS, BPF_IND = 0x00, 0x20, 0x40
BPF_AND, BPF_JEQ, BPF_K, BPF_TAX = 0x50, 0x10, 0x00, 0x00
SKF_AD_OFF = -0x1000
SKF_AD_NLATTR, SKF_AD_NLATTR_NEST = 12, 16
SO_ATTACH_FILTER = 26  # asm-generic/socket.h
ACCEPT_ALL = 0xFFFFFFFF  # a return value: deliver the whole message
DROP = 0

_INSN = struct.Struct("=HBBI")  # struct sock_filter
_FPROG = struct.Struct("@HP")  # struct sock_fprog: len, then a pointer (native alignment)


class Insn(NamedTuple):
    """One instruction; a jump's ``jt`` and ``jf`` are instructions to skip, or the name
    of a ``Label`` further on."""

    code: int
    jt: int | str = 0
    jf: int | str = 0
    k: int = 0


class Label(NamedTuple):
    """A place in a program that jumps name (not an instruction)."""

    name: str


Program = Sequence[Insn | Label]


def ld_imm(k: int) -> Insn:
    """A = k"""
    return Insn(BPF_LD | BPF_IMM, k=k)


def ldx_imm(k: int) -> Insn:
    """X = k"""
    return Insn(BPF_LDX | BPF_W | BPF_IMM, k=k)


def ldb_abs(offset: int) -> Insn:
    """A = the byte at ``offset``"""
    return Insn(BPF_LD | BPF_B | BPF_ABS, k=offset)


def ldb_ind(offset: int) -> Insn:
    """A = the byte at X + ``offset``"""
    return Insn(BPF_LD | BPF_B | BPF_IND, k=offset)


def ldw_ind(offset: int) -> Insn:
    """A = the 32-bit word at X + ``offset``, in network order"""
    return Insn(BPF_LD | BPF_W | BPF_IND, k=offset)


def nlattr() -> Insn:
    """A = the offset of the attribute of type X from offset A on (0: none)"""
    return Insn(BPF_LD | BPF_W | BPF_ABS, k=(SKF_AD_OFF + SKF_AD_NLATTR) & 0xFFFFFFFF)


def nlattr_nest() -> Insn:
    """A = the offset of the attribute of type X inside the one at offset A (0: none)"""
    return Insn(BPF_LD | BPF_W | BPF_ABS, k=(SKF_AD_OFF + SKF_AD_NLATTR_NEST) & 0xFFFFFFFF)


def tax() -> Insn:
    """X = A"""
    return Insn(BPF_MISC | BPF_TAX)


def and_k(k: int) -> Insn:
    """A &= k"""
    return Insn(BPF_ALU | BPF_AND | BPF_K, k=k)


def jeq(k: int, jt: int | str = 0, jf: int | str = 0) -> Insn:
    """if A == k skip ``jt`` instructions, else ``jf``"""
    return Insn(BPF_JMP | BPF_JEQ | BPF_K, jt, jf, k)


def ret(k: int) -> Insn:
    """end: deliver ``k`` bytes of the message (0: drop it)"""
    return Insn(BPF_RET | BPF_K, k=k)


def assemble(program: Program) -> bytes:
    """The program as the kernel reads it (an array of struct sock_filter), its labels
    resolved; ValueError for a jump backwards or past the end, an unknown label, or a
    program the kernel would refuse as too long."""
    insns: list[Insn] = []
    labels: dict[str, int] = {}
    for item in program:
        if isinstance(item, Label):
            labels[item.name] = len(insns)
        else:
            insns.append(item)
    if not 0 < len(insns) <= 4096:  # BPF_MAXINSNS
        raise ValueError(f"a BPF program of {len(insns)} instructions")

    def skip(at: int, target: int | str) -> int:
        if isinstance(target, str):
            if target not in labels:
                raise ValueError(f"BPF instruction {at} jumps to no label {target!r}")
            target = labels[target] - at - 1
        if not 0 <= target < len(insns) - at - 1 or target > 255:
            raise ValueError(f"BPF instruction {at} jumps out of the program")
        return target

    code = b""
    for at, insn in enumerate(insns):
        jt = jf = 0
        if insn.code & 0x07 == BPF_JMP:
            jt, jf = skip(at, insn.jt), skip(at, insn.jf)
        code += _INSN.pack(insn.code, jt, jf, insn.k)
    return code


def attach(sock: socket.socket, program: Program) -> None:
    """SO_ATTACH_FILTER: ``program`` filters what ``sock`` receives from now on
    (replacing a filter attached before).  OSError if the kernel refuses it."""
    code = assemble(program)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = _FPROG.pack(len(code) // _INSN.size, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
