"""Classic BPF programs as the kernel reads them (director/shell/bpf.py).

struct sock_filter is { __u16 code; __u8 jt; __u8 jf; __u32 k; } in host order
(linux/filter.h); the codes are linux/bpf_common.h's: BPF_LD|BPF_W|BPF_ABS = 0x20,
BPF_JMP|BPF_JEQ|BPF_K = 0x15, BPF_RET|BPF_K = 0x06, BPF_MISC|BPF_TAX = 0x07,
BPF_LD|BPF_B|BPF_IND = 0x50; SKF_AD_OFF is -0x1000 and SKF_AD_NLATTR 12.
"""

from __future__ import annotations

import struct

import pytest

from director.shell import bpf


def insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def test_labels_resolve_to_the_instructions_skipped() -> None:
    program = [
        bpf.nlattr(),
        bpf.jeq(0, "drop", 0),
        bpf.tax(),
        bpf.ldb_ind(4),
        bpf.jeq(3, "accept", "drop"),
        bpf.Label("accept"),
        bpf.ret(bpf.ACCEPT_ALL),
        bpf.Label("drop"),
        bpf.ret(bpf.DROP),
    ]
    assert bpf.assemble(program) == b"".join([
        insn(0x20, 0, 0, 0xFFFFF00C),
        insn(0x15, 4, 0, 0),
        insn(0x07, 0, 0, 0),
        insn(0x50, 0, 0, 4),
        insn(0x15, 0, 1, 3),
        insn(0x06, 0, 0, 0xFFFFFFFF),
        insn(0x06, 0, 0, 0),
    ])  # fmt: skip


@pytest.mark.parametrize(
    "program",
    [
        [],
        [bpf.jeq(0, "nowhere", 0), bpf.ret(0)],
        [bpf.jeq(0, 1, 0), bpf.ret(0)],  # past the end
        [bpf.Label("back"), bpf.ret(0), bpf.jeq(0, "back", 0), bpf.ret(0)],
        [bpf.ret(0)] * 4097,
    ],
)
def test_programs_the_kernel_would_refuse_are_refused_here(
    program: list[bpf.Insn | bpf.Label],
) -> None:
    with pytest.raises(ValueError):
        bpf.assemble(program)
