"""director-ipvsadm's pure parts: the restore input turned into the daemon's restore
text (director.cli.ipvsadm.restore_text / op_line), and run()'s answers that need no
daemon.  The daemon's side is tests/netns/test_netns_ipvsadm.py."""

from __future__ import annotations

import io
import shlex

import pytest

from director.cli.ipvsadm import op_line, restore_text, run
from director.ctl.ipvsadm import parse_line
from director.ctl.ipvsadm_cmdline import NUMERIC, IpvsadmError, Unsupported, parse, usage

LINES = [
    "-A -t 203.0.113.5:80 -s rr",
    "-A -t 203.0.113.5:443 -s sh -p 600 -M 255.255.255.0",
    "-A -u 203.0.113.8:82 -s rr -o",
    "-A -t 203.0.113.7:80 -s sh -b sh-fallback,sh-port",
    "-A -f 3 -6 -s rr -p -M 48",
    "-E -t 203.0.113.5:80 -s wrr",
    "-D -u 203.0.113.5:53",
    "-a -t 203.0.113.5:80 -r 198.18.0.4:80 -m -w 2",
    "-a -t 203.0.113.5:443 -r 198.18.0.2 -i -x 100 -y 50",
    "-a -t [2001:db8:1::100]:80 -r 198.18.0.2:80 -i",
    "-a -f 2 -6 -r [2001:db8:2::2]:0 -m",
    "-e -t 203.0.113.5:80 -r 198.18.0.3:80 -m -w 5",
    "-e -t 203.0.113.5:80 -r 198.18.0.3:80",
    "-d -t 203.0.113.5:80 -r 198.18.0.4:80",
    "-C",
    "--set 100 20 30",
]


@pytest.mark.parametrize("line", LINES)
def test_op_line_is_the_same_op_to_the_daemon(line: str) -> None:
    """What ipvsadm's command line says is what the daemon's restore parser reads back
    from the line director-ipvsadm sends it."""
    op = parse(shlex.split(line)).op
    assert op is not None
    assert parse_line(op_line(op)) == op


def test_restore_text_reads_lines_as_config_stream_read() -> None:
    """Words split at blanks, a word "ipvsadm" dropped, nothing from a '#' on
    (config_stream.c's rule), blank lines skipped; director's own check lines kept."""
    text = (
        "# saved\n\n-At 203.0.113.5:80 -s rr\n  \n"
        "ipvsadm -a -t 203.0.113.5:80\t-r 198.18.0.2 -m  # the first one\n"
        "# director-check -t 203.0.113.5:80 --type tcp\n"
    )
    assert restore_text(text, "ipvsadm", NUMERIC) == (
        "-A -t 203.0.113.5:80 -s rr\n-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m -w 1\n"
        "# director-check -t 203.0.113.5:80 --type tcp\n"
    )


def test_restore_text_refuses_what_is_no_change() -> None:
    """-R inside -R is restore_table's tryhelp_exit (255); a list, save or zero line
    is refused in one line (director applies the file whole, it runs no listing)."""
    with pytest.raises(IpvsadmError) as caught:
        restore_text("-R\n", "ipvsadm", NUMERIC)
    assert caught.value.status == 255 and caught.value.message.startswith("Try `ipvsadm -h'")
    for line in ("-L -n", "-S", "-Z"):
        with pytest.raises(Unsupported) as refused:
            restore_text(f"-A -t 203.0.113.5:80\n{line}\n", "ipvsadm", NUMERIC)
        assert refused.value.status == 2 and "\n" not in refused.value.message


def test_restore_text_names_the_first_bad_line_as_ipvsadm() -> None:
    with pytest.raises(IpvsadmError) as caught:
        restore_text(
            "-A -t 203.0.113.5:80\n-a -t 203.0.113.5:80 -r 198.18.0.2 -w x\n", "x", NUMERIC
        )
    assert (caught.value.message, caught.value.status) == ("illegal weight specified", 2)


def _run(*argv: str) -> tuple[str, str, int]:
    out, err = io.StringIO(), io.StringIO()
    status = run(list(argv), out=out, err=err, socket_path="/nonexistent/director.sock")
    return out.getvalue(), err.getvalue(), status


def test_run_without_a_daemon() -> None:
    """-h, --version and bad command lines need no daemon; the rest is ipvsadm's
    "Can't initialize ipvs" (status 2) when nothing answers."""
    assert _run("-h") == (usage("ipvsadm"), "", 0)
    assert _run("-A", "-L") == ("", "invalid option `-L'\n", 2)
    assert _run("-L", "-t") == ("", "-t: missing argument\n", 255)
    out, err, status = _run("-Ln")
    assert (out, status) == ("", 2) and err.startswith("Can't initialize ipvs: ")
    assert err.count("\n") == 1
