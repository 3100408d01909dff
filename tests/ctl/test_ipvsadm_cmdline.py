"""ipvsadm 1.31's command line (director.ctl.ipvsadm_cmdline) against ipvsadm itself.

Every expected message and exit code is captured from ipvsadm 1.31 (kernel 6.1) in the
IPVS VM (tests/ctl/ipvsadm131/README.md): vm_matrix.out (every command with every
option, one at a time) and vm_ipvsadm_cli.out (the transcript of ipvsadm_cli.sh).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from director.ctl.ipvsadm import parse_line
from director.ctl.ipvsadm_cmdline import (
    NUMERIC,
    VERSION_LINE,
    Command,
    IpvsadmError,
    KernelRefused,
    Unsupported,
    parse,
    usage,
)
from director.ctl.ops import AddServer, AddService, EditServer

CAPTURES = Path(__file__).parent / "ipvsadm131"

# ipvsadm_matrix.sh's BASE: each command's own words.
BASE = {
    "-A": "-A -t 203.0.113.9:80",
    "-E": "-E -t 203.0.113.5:80",
    "-D": "-D -t 203.0.113.5:80",
    "-C": "-C",
    "-L": "-L",
    "-a": "-a -t 203.0.113.5:80 -r 198.18.0.9:80",
    "-e": "-e -t 203.0.113.5:80 -r 198.18.0.2:80",
    "-d": "-d -t 203.0.113.5:80 -r 198.18.0.2:80",
    "--set": "--set 900 120 300",
    "-Z": "-Z",
    "-S": "-S",
    "-R": "-R",
    "--start-daemon": "--start-daemon master",
    "--stop-daemon": "--stop-daemon master",
}
# Options of ipvsadm's that director does not have: refused after ipvsadm's checks.
UNSUPPORTED = ("--pe",)


@dataclass(frozen=True)
class Row:
    command: str
    option: str
    status: int
    first: str

    @property
    def argv(self) -> list[str]:
        extra = [] if self.option == "(base)" else self.option.split()
        return [*BASE[self.command].split(), *extra]


def _matrix() -> list[Row]:
    rows = []
    for line in (CAPTURES / "vm_matrix.out").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 4:
            rows.append(Row(parts[0], parts[1], int(parts[2]), parts[3]))
    return rows


MATRIX = _matrix()


def _outcome(argv: list[str]) -> Command | IpvsadmError:
    try:
        return parse(argv)
    except IpvsadmError as exc:
        return exc


def test_the_matrix_is_whole() -> None:
    """14 commands, each alone and with each of the 41 options of the job."""
    assert len(MATRIX) == 14 * 42


@pytest.mark.parametrize("row", MATRIX, ids=lambda r: f"{r.command} {r.option}")
def test_matrix(row: Row) -> None:
    """Each line of vm_matrix.out, captured from ipvsadm 1.31 (kernel 6.1) in the IPVS
    VM: status 2 is ipvsadm's own check, with its message; 0 parses; 255 and 1 are the
    kernel's or the listing's (the daemon's here), except the one kernel check the
    parser makes itself (-y above -x: ERANGE)."""
    got = _outcome(row.argv)
    if row.option.split()[0] in UNSUPPORTED and row.status == 0:
        assert isinstance(got, Unsupported) and got.status == 2
        return
    if row.status == 2:
        assert isinstance(got, IpvsadmError), got
        assert (got.status, got.message.splitlines()[0]) == (2, row.first)
    elif row.status == 0:
        assert isinstance(got, Command), got.message if isinstance(got, IpvsadmError) else got
    else:
        assert isinstance(got, Command) or (
            isinstance(got, KernelRefused) and got.message == row.first
        ), got


@dataclass(frozen=True)
class Capture:
    program: str
    argv: list[str]
    stdout: str
    stderr: str
    status: int


def _transcript() -> list[Capture]:
    """The sections of vm_ipvsadm_cli.out that have the ``--- rc`` framing."""
    found: list[Capture] = []
    text = (CAPTURES / "vm_ipvsadm_cli.out").read_text()
    for block in text.split("### ")[1:]:
        head, _, rest = block.partition("\n")
        if "--- rc " not in rest:
            continue
        out, _, rest = rest.removeprefix("--- stdout\n").partition("--- stderr\n")
        err, _, rest = rest.partition("--- rc ")
        words = shlex.split(head)
        found.append(Capture(words[0], words[1:], out, err, int(rest.split()[0])))
    return found


TRANSCRIPT = _transcript()
PARSED_BY_IPVSADM = [c for c in TRANSCRIPT if c.program == "ipvsadm" and c.argv]


@pytest.mark.parametrize("capture", PARSED_BY_IPVSADM, ids=lambda c: " ".join(c.argv))
def test_transcript_command_lines(capture: Capture) -> None:
    """Each command line of vm_ipvsadm_cli.out, captured from ipvsadm 1.31 (kernel 6.1)
    in the IPVS VM: where ipvsadm refused it itself (status 2, popt's 255), the same
    words and status; where it went on, the parser takes it."""
    got = _outcome(capture.argv)
    if isinstance(got, IpvsadmError) and not isinstance(got, KernelRefused):
        assert (got.message + "\n", got.status) == (capture.stderr, capture.status)
    elif isinstance(got, KernelRefused):  # the kernel's words, ipvsadm's 255
        assert (got.message + "\n", got.status) == (capture.stderr, 255)
    else:
        assert capture.status in (0, 1, 255), capture
        assert capture.status == 0 or capture.stderr.strip() in (
            "Service already exists",
            "Destination already exists",
            "No such destination",
            "No such service",
        )


def test_transcript_has_the_bad_command_lines() -> None:
    """The transcript's own refusals are all among the parametrized cases."""
    refused = [c for c in PARSED_BY_IPVSADM if c.status == 2]
    assert len(refused) == 24


def test_usage_and_version() -> None:
    """-h and --version print what ipvsadm 1.31 printed in the IPVS VM, byte for byte."""
    by_argv = {tuple(c.argv): c for c in PARSED_BY_IPVSADM}
    assert usage("ipvsadm") == by_argv[("-h",)].stdout
    assert by_argv[("--version",)].stdout == VERSION_LINE + "\n"
    assert parse(["-h"]).command == "help"
    assert parse(["--help"]).command == "help"
    assert parse(["-v"]).command == "version"
    assert usage("/sbin/ipvsadm").splitlines()[2].startswith("  /sbin/ipvsadm -A|E ")


def test_no_arguments_is_list() -> None:
    """main(): argc == 1 lists the table (FMT_NONE, not numeric)."""
    cmd = parse([])
    assert cmd.command == "list" and not cmd.numeric


# --- popt's spellings ------------------------------------------------------------------

SPELLINGS = [
    ("-A -t 203.0.113.5:80 -s rr", "-At 203.0.113.5:80 -s rr"),
    ("-A -t 203.0.113.5:80 -s rr", "-At203.0.113.5:80 -srr"),
    ("-A -t 203.0.113.5:80 -s rr", "--add-service --tcp-service 203.0.113.5:80 --scheduler rr"),
    ("-A -t 203.0.113.5:80 -s rr", "--add-service --tcp-service=203.0.113.5:80 --scheduler=rr"),
    ("-A -t 203.0.113.5:80 -s rr", "-A -t=203.0.113.5:80 -s rr"),
    ("-A -t 203.0.113.5:80 -p 600", "-A -t 203.0.113.5:80 -p600"),
    ("-A -t 203.0.113.5:80 -p 360", "-A -t 203.0.113.5:80 -p"),
    ("-A -t 203.0.113.5:80 -p 360 -s rr", "-A -t 203.0.113.5:80 -p -s rr"),
    ("-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m -w 2", "-a -t 203.0.113.5:80 -mr 198.18.0.2:80 -w2"),
    ("-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m", "-a -t 203.0.113.5:80 -r 198.18.0.2:80 --masq"
                                                 "uerading"),
    ("-A -f 2 -6 -s wlc", "-A -f 2 --ipv6 -s wlc"),
    ("-A -f 2 -6 -s wlc", "--add-service --fwmark-service=2 -6 --scheduler wlc"),
]  # fmt: skip


@pytest.mark.parametrize(("plain", "spelled"), SPELLINGS)
def test_popt_spellings(plain: str, spelled: str) -> None:
    """Long options, --opt=value, clusters with the last letter taking the next word
    or the rest of the cluster (popt's nextCharArg), -t=ADDR, -p's optional value
    (the next word unless it starts with '-'), as ipvsadm's popt takes them."""
    assert parse(spelled.split()).op == parse(plain.split()).op


def test_clusters_of_list_options() -> None:
    """-Ln, -lcn and -L -n are the same command, as in the transcript's listings."""
    assert parse(["-Ln"]).options == parse(["-L", "-n"]).options == {"numeric"}
    assert parse(["-lcn"]).options == {"numeric", "connection"}
    assert parse(["-Lc", "-n"]).options == {"numeric", "connection"}


def test_popt_errors() -> None:
    """popt's own errors are "WORD: reason" and ipvsadm returns -1 (255); before the
    command, any error is tryhelp_exit(-1)."""
    for argv, message in [
        (["-L", "-t"], "-t: missing argument"),
        (["-L", "--bogus"], "--bogus: unknown option"),
        (["-L", "-Q"], "-Q: unknown option"),
        (["-L", "--stats=1"], "--stats=1: option does not take an argument"),
        (["--bogus"], "Try `ipvsadm -h' or 'ipvsadm --help' for more information."),
        (["-t", "203.0.113.5:80", "-A"], "Try `ipvsadm -h' or 'ipvsadm --help' for more "
                                         "information."),
        (["extra"], "Try `ipvsadm -h' or 'ipvsadm --help' for more information."),
    ]:  # fmt: skip
        with pytest.raises(IpvsadmError) as caught:
            parse(argv)
        assert (caught.value.message, caught.value.status) == (message, 255)
    with pytest.raises(IpvsadmError) as caught:
        parse(["--bogus"], prog="ipvsadm-x")
    assert "`ipvsadm-x -h' or 'ipvsadm-x --help'" in caught.value.message


def test_arguments_after_double_dash_are_arguments() -> None:
    with pytest.raises(IpvsadmError) as caught:
        parse(["-L", "--", "-n"])
    assert caught.value.message == "unexpected argument -n"
    assert parse(["--set", "--", "1", "2", "3"]).op is not None


def test_the_first_option_is_the_command() -> None:
    """A second command is parse_options' default case: "invalid option `WORD'"."""
    for argv, word in [(["-A", "-L"], "-L"), (["-L", "-h"], "-h"), (["-L", "-AC"], "-AC")]:
        with pytest.raises(IpvsadmError) as caught:
            parse(argv)
        assert caught.value.message == f"invalid option `{word}'"


def test_edit_server_sends_ipvsadm_defaults() -> None:
    """ipvsadm -e sends a whole destination (process_options: weight 1, -g, thresholds
    0 unless given): the kernel then has exactly that."""
    op = parse(shlex.split("-e -t 203.0.113.5:80 -r 198.18.0.3:80 -w 5")).op
    assert op == EditServer(("tcp", "203.0.113.5", 80), "198.18.0.3", 80, "droute", 5, 0, 0)


def test_real_server_port_is_the_service_port_without_one() -> None:
    """parse_service == SERVICE_ADDR: the destination takes the virtual port (and DR/TUN
    always the service's, as process_options forces)."""
    op = parse(shlex.split("-a -t 203.0.113.5:80 -r 198.18.0.2 -m")).op
    assert isinstance(op, AddServer) and op.dest.port == 80
    op = parse(shlex.split("-a -t 203.0.113.5:80 -r 198.18.0.2:8080 -g")).op
    assert isinstance(op, AddServer) and op.dest.port == 80
    op = parse(shlex.split("-a -f 1 -r 198.18.0.2 -m")).op
    assert isinstance(op, AddServer) and op.dest.port == 0


class FakeNames:
    """Lookups as /etc/services and /etc/hosts would answer them."""

    def host_addr(self, name: str) -> str | None:
        return {"www.example": "203.0.113.5"}.get(name)

    def service_port(self, name: str, proto: str) -> int | None:
        return {("http", "tcp"): 80, ("domain", "udp"): 53}.get((name, proto))


def test_names_on_input() -> None:
    """parse_service resolves a host by gethostbyname and a port by getservbyname of
    the service's protocol; the numeric resolver takes neither."""
    names = FakeNames()
    cmd = parse(shlex.split("-A -t www.example:http -s rr"), names=names)
    assert cmd.key == ("tcp", "203.0.113.5", 80)
    udp = parse(shlex.split("-A -u 203.0.113.5:domain"), names=names)
    assert udp.key == ("udp", "203.0.113.5", 53)
    with pytest.raises(IpvsadmError) as caught:
        parse(shlex.split("-A -u 203.0.113.5:http"), names=names)  # no udp "http" here
    assert caught.value.message == "illegal virtual server address[:port] specified"
    with pytest.raises(IpvsadmError):
        parse(shlex.split("-A -t www.example:80"), names=NUMERIC)


def test_unsupported_options_are_one_line_status_2() -> None:
    for line in [
        "-A --sctp-service 203.0.113.5:80",
        "-A -t 203.0.113.5:80 --pe sip",
    ]:
        with pytest.raises(Unsupported) as caught:
            parse(line.split())
        assert caught.value.status == 2 and "\n" not in caught.value.message
        assert "not supported by director" in caught.value.message


def test_tunnel_types_parse_to_the_destination_the_kernel_keeps() -> None:
    """ipvsadm 1.31's GUE and GRE options (vm_ipvsadm_cli.out: -a ... -i --tun-type gue
    --tun-port 6080 --tun-nocsum, --tun-type gre --tun-csum) build the real server with
    that tunnel; -e sends a whole destination, so -e -i alone makes it IPIP again (the
    VM: ``-e ... -i`` after ``--tun-type gre`` saved ``--tun-type ipip``)."""
    gue = parse(
        shlex.split(
            "-a -t 203.0.113.7:80 -r 198.18.0.3 -i --tun-type gue --tun-port 6080 --tun-nocsum"
        )
    ).op
    assert isinstance(gue, AddServer)
    assert (gue.dest.tun_type, gue.dest.tun_port, gue.dest.tun_flags) == ("gue", 6080, "nocsum")
    gre = parse(shlex.split("-a -t 203.0.113.7:80 -r 198.18.0.4 -i --tun-type gre --tun-csum")).op
    assert isinstance(gre, AddServer)
    assert (gre.dest.tun_type, gre.dest.tun_port, gre.dest.tun_flags) == ("gre", 0, "csum")
    edit = parse(shlex.split("-e -t 203.0.113.7:80 -r 198.18.0.3 -i")).op
    assert isinstance(edit, EditServer) and edit.tun_type == "ipip"
    remcsum = parse(
        shlex.split(
            "-a -t 203.0.113.7:80 -r 198.18.0.3 -i --tun-type gue --tun-port 1 --tun-remcsum"
        )
    ).op
    assert isinstance(remcsum, AddServer) and remcsum.dest.tun_flags == "remcsum"


def test_ipvsadm_save_lines_parse_to_the_daemons_ops() -> None:
    """Each line ipvsadm-save -n printed in the IPVS VM means to this parser what it
    means to the daemon's restore parser (director.ctl.ipvsadm.parse_line)."""
    saved = next(c for c in PARSED_BY_IPVSADM if c.argv == ["-Sn"]).stdout
    for line in saved.splitlines():
        ours = parse(shlex.split(line)).op
        assert ours == parse_line(line), line
        assert isinstance(ours, AddService | AddServer)
