"""The effect of each IPVS sysctl that changes packet handling, at the kernel's default
and set (Documentation/networking/ipvs-sysctl.rst; the code that reads each is named
in its test).

Expected packets are built by dpkt with the fields the kernel writes: ip_vs_nat_icmp's
rewrite of a relayed error (as in test_golden_icmp.py), icmp_send's port unreachable
(RFC 792: the offending header and 8 bytes of its payload).
"""

from __future__ import annotations

import socket

import dpkt
import pytest

from director.core import estimator
from director.core.engine import Director
from director.core.route import Route
from director.core.sysctl import Sysctls
from director.core.xmit import ACCEPT, DIRECT, DROP, SEND
from director.model.config import Config, DestConf, ServiceConf
from tests.core.packets import ACK, CLIENT, RS1, RS2, SYN, VIP, tcp, udp
from tests.core.packets6 import CLIENT6, RS6_2, VIP6, a6, icmp6, tcp6
from tests.core.test_golden_icmp import ROUTER, icmp_error, resum

SOURCE = "198.18.0.1"  # the director's address toward the real servers
SOURCE6 = "2001:db8:2::1"


def director(*services: ServiceConf, **sysctls: str) -> Director:
    d = Director()
    d.sysctls = Sysctls().updated(sysctls)
    d.configure(Config(services=services))
    for svc in d.services:
        for dest in svc.dests:
            v6 = len(dest.addr) == 16
            source = a6(SOURCE6) if v6 else socket.inet_aton(SOURCE)
            dest.route = Route(ifindex=3, source=source, mtu=1500)
    return d


def nat(method: str = "masq", scheduler: str = "rr", *dests: str) -> ServiceConf:
    return ServiceConf(
        "tcp", VIP, 80, scheduler=scheduler,
        dests=tuple(DestConf(rs, 8000, method) for rs in dests or (RS2,)),
    )  # fmt: skip


# -- schedule_icmp (ip_vs_in_icmp, ip_vs_in_icmp_v6: "if (!cp) { if (... ||
#    !sysctl_schedule_icmp(ipvs)) return NF_ACCEPT; ip_vs_try_to_schedule(...) }")


def _too_big_about_the_vips_reply(cport: int = 40000) -> tuple[bytes, bytes]:
    reply = bytes(tcp(VIP, CLIENT, 80, cport, ACK, b"x" * 100))
    return reply, icmp_error(ROUTER, VIP, reply, 3, 4, mtu=1280)


def test_schedule_icmp_off_an_error_for_no_connection_goes_to_the_local_stack() -> None:
    d = director(nat())
    _, error = _too_big_about_the_vips_reply()
    assert d.hook_in(bytearray(error), 1.0) == (ACCEPT, None)
    assert d.passes["icmp_no_conn"] == 1 and len(d.conns) == 0


def test_schedule_icmp_on_the_error_schedules_the_clients_connection() -> None:
    """The quoted header read reversed (IP_VS_HDR_INVERSE) is the client's connection
    to the VIP: ip_vs_schedule makes it (state NONE, ip_vs_conn_new's 3 s) and
    ip_vs_icmp_xmit relays the error to the real server, rewritten as for a known
    connection (ip_vs_nat_icmp)."""
    d = director(nat(), schedule_icmp="1")
    reply, error = _too_big_about_the_vips_reply()
    action, data = d.hook_in(bytearray(error), 1.0)
    assert action == SEND
    quoted = bytearray(reply[:28])
    quoted[12:16] = socket.inet_aton(RS2)
    quoted[20:22] = (8000).to_bytes(2, "big")
    resum(quoted)
    # one hop older: ip_vs_icmp_xmit's __ip_vs_get_out_rt calls decrement_ttl
    assert bytes(data) == icmp_error(ROUTER, RS2, bytes(quoted), 3, 4, mtu=1280, ttl=49)
    (conn,) = d.conns
    assert (conn.caddr, conn.cport, conn.vaddr, conn.vport) == (
        socket.inet_aton(CLIENT), 40000, socket.inet_aton(VIP), 80,
    )  # fmt: skip
    assert conn.timeout == 3 and conn.expires == 4.0
    dest = next(iter(d.services)).dests[0]
    assert (dest.stats.conns, dest.stats.inpkts) == (1, 1)


def test_schedule_icmp_sends_the_error_where_another_director_sent_the_flow() -> None:
    """The use it was made for: directors behind ECMP with a consistent scheduler (sh
    hashes the client, ip_vs_sh_schedule reading iph->daddr of an inverse header): the
    director that only hears the router's error picks the real server the client's
    own director picked."""
    seen, stranger = (director(nat("droute", "sh", RS1, RS2), schedule_icmp="1")
                      for _ in range(2))  # fmt: skip
    for last in range(10, 30):
        client = f"203.0.113.{last}"
        assert seen.hook_in(tcp(client, VIP, 40000, 80, SYN), 0.0)[0] == DIRECT
        reply = bytes(tcp(VIP, client, 80, 40000, ACK, b"x" * 100))
        error = icmp_error(ROUTER, VIP, reply, 3, 4, mtu=1280)
        assert stranger.hook_in(bytearray(error), 1.0)[0] == DIRECT
    picked = {(c.caddr, c.daddr) for c in seen.conns}
    assert len({daddr for _, daddr in picked}) == 2  # both real servers were picked
    assert picked == {(c.caddr, c.daddr) for c in stranger.conns}


def test_schedule_icmp_with_no_real_server_drops_the_error_unanswered() -> None:
    """ip_vs_leave: "if (unlikely(ip_vs_iph_icmp(iph))) return NF_DROP" (no port
    unreachable about an ICMP error)."""
    d = director(ServiceConf("tcp", VIP, 80, dests=()), schedule_icmp="1")
    _, error = _too_big_about_the_vips_reply()
    assert d.hook_in(bytearray(error), 1.0) == (DROP, "no_dest")
    assert len(d.conns) == 0


def test_schedule_icmp_for_ipv6() -> None:
    """ip_vs_in_icmp_v6 schedules the same way; the quote is rewritten as
    ip_vs_nat_icmp_v6 rewrites it, the hop limit one less (decrement_ttl)."""
    svc = ServiceConf("tcp", VIP6, 80, dests=(DestConf(RS6_2, 8000, "masq"),))
    d = director(svc, schedule_icmp="1")
    reply = bytes(tcp6(VIP6, CLIENT6, 80, 40000, ACK, b"x" * 100))
    action, data = d.hook_in(icmp6("2001:db8:3::1", VIP6, 2, 0, reply, 1280), 1.0)
    assert action == SEND
    quoted = bytearray(reply)
    quoted[8:24] = a6(RS6_2)
    quoted[40:42] = (8000).to_bytes(2, "big")
    assert bytes(data) == bytes(icmp6("2001:db8:3::1", RS6_2, 2, 0, bytes(quoted), 1280, 49))
    assert len(d.conns) == 1


# -- nat_icmp_send (ip_vs_out_hook: "if (sysctl_nat_icmp_send(ipvs) && ...
#    ip_vs_has_real_service(...)) ... icmp_send(skb, ICMP_DEST_UNREACH,
#    ICMP_PORT_UNREACH, 0); return NF_DROP;")


def _port_unreachable_to_rs(packet: bytes) -> bytes:
    body = dpkt.icmp.ICMP.Unreach(data=packet[:28])
    icmp = dpkt.icmp.ICMP(type=3, code=3, data=body)
    ip = dpkt.ip.IP(src=socket.inet_aton(SOURCE), dst=socket.inet_aton(RS2), p=1, ttl=64,
                    data=icmp)  # fmt: skip
    return bytes(ip)


def test_nat_icmp_send_off_a_stray_reply_goes_on() -> None:
    d = director(nat())
    stray = tcp(RS2, CLIENT, 8000, 40000, ACK, b"late")
    assert d.hook_out(stray, 1.0) == (ACCEPT, None)
    assert d.passes["no_conn"] == 1


def test_nat_icmp_send_on_a_stray_reply_is_answered_and_dropped() -> None:
    d = director(nat(), nat_icmp_send="1")
    stray = tcp(RS2, CLIENT, 8000, 40000, ACK, b"late")
    action, data = d.hook_out(bytearray(stray), 1.0)
    assert action == SEND
    assert bytes(data) == _port_unreachable_to_rs(bytes(stray))


def test_nat_icmp_send_leaves_resets_other_ports_and_other_methods_alone() -> None:
    """A TCP reset is let go (is_tcp_reset); a port no NAT real server has, or a
    real server of another method, is no real service (ip_vs_has_real_service: the
    rs_table holds MASQ destinations only)."""
    d = director(nat(), nat_icmp_send="1")
    reset = tcp(RS2, CLIENT, 8000, 40000, dpkt.tcp.TH_RST)
    assert d.hook_out(reset, 1.0) == (ACCEPT, None)
    assert d.hook_out(tcp(RS2, CLIENT, 8001, 40000, ACK), 1.0) == (ACCEPT, None)
    assert d.hook_out(udp(RS2, CLIENT, 8000, 40000, b"q"), 1.0) == (ACCEPT, None)
    dr = director(nat("droute"), nat_icmp_send="1")
    assert dr.hook_out(tcp(RS2, CLIENT, 8000, 40000, ACK), 1.0) == (ACCEPT, None)


def test_nat_icmp_send_answers_udp_and_firewall_mark_real_servers() -> None:
    """UDP is answered as TCP is; a firewall-mark service's real server matches any
    protocol ("dest->protocol == protocol || dest->vfwmark")."""
    fwm = ServiceConf("fwm", "", 0, fwmark=7, dests=(DestConf(RS2, 8000, "masq"),))
    d = director(fwm, nat_icmp_send="1")
    stray = udp(RS2, CLIENT, 8000, 5000, b"late")
    action, data = d.hook_out(bytearray(stray), 1.0)
    assert action == SEND and bytes(data) == _port_unreachable_to_rs(bytes(stray))


# -- pmtu_disc (ip_vs_xmit.c: ensure_mtu_is_adequate "if ((rt_mode &
#    IP_VS_RT_MODE_TUNNEL) && !sysctl_pmtu_disc(ipvs)) return true;", and
#    ip_vs_tunnel_xmit "dfp = sysctl_pmtu_disc(ipvs) ? &df : NULL")

RS_REMOTE = "198.19.0.2"


def _tun(**sysctls: str) -> Director:
    svc = ServiceConf("tcp", VIP, 80, dests=(DestConf(RS_REMOTE, 80, "tunnel"),))
    d = director(svc, **sysctls)
    assert d.hook_in(_df(tcp(CLIENT, VIP, 40000, 80, SYN)), 0.0)[0] == SEND
    return d


def _df(raw: bytearray) -> bytearray:
    ip = dpkt.ip.IP(bytes(raw))
    ip.df = 1
    ip.sum = 0
    return bytearray(bytes(ip))


def _outer(sent: bytes, df: bool) -> bytes:
    """RFC 2003's outer header as ip_vs_tunnel_xmit writes it (TOS and TTL the inner
    ones, id 0 for the raw socket to fill, protocol 4), DF as given, around the
    client's packet ``sent`` one hop older (__ip_vs_get_out_rt's decrement_ttl)."""
    older = dpkt.ip.IP(sent)
    older.ttl -= 1
    older.sum = 0
    inner = bytes(older)
    ip = dpkt.ip.IP(tos=inner[1], id=0, ttl=inner[8], p=4, src=socket.inet_aton(SOURCE),
                    dst=socket.inet_aton(RS_REMOTE), data=inner)  # fmt: skip
    ip.df = int(df)
    return bytes(ip)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "general"])
def test_pmtu_disc_on_a_df_packet_too_big_for_the_tunnel_is_answered(fused: bool) -> None:
    d = _tun()
    d.fused = fused
    big = _df(tcp(CLIENT, VIP, 40000, 80, ACK, b"y" * 1480))  # 1520 bytes, 1480 fit
    action, packet = d.hook_in(bytearray(big), 1.0)
    assert action == SEND
    icmp = dpkt.ip.IP(bytes(packet))
    assert (icmp.data.type, icmp.data.code, icmp.data.data.mtu) == (3, 4, 1480)
    fits = _df(tcp(CLIENT, VIP, 40000, 80, ACK, b"y" * 100))
    assert d.hook_in(bytearray(fits), 1.0) == (SEND, bytearray(_outer(bytes(fits), True)))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "general"])
def test_pmtu_disc_off_the_tunnel_carries_it_without_df_to_be_fragmented(fused: bool) -> None:
    """The outer header has no DF whatever the client's says, and a packet too big for
    the tunnel goes on whole (the worker's send fragments it, as ip_fragment would)."""
    d = _tun(pmtu_disc="0")
    d.fused = fused
    for size in (100, 1480):
        inner = _df(tcp(CLIENT, VIP, 40000, 80, ACK, b"y" * size))
        assert d.hook_in(bytearray(inner), 1.0) == (SEND, bytearray(_outer(bytes(inner), False)))


def test_pmtu_disc_set_at_run_time_reaches_the_real_servers_of_every_service() -> None:
    d = _tun()
    d.sysctls = d.sysctls.updated({"pmtu_disc": "0"})
    inner = _df(tcp(CLIENT, VIP, 40000, 80, ACK, b"y" * 1480))
    assert d.hook_in(bytearray(inner), 1.0)[1] == bytearray(_outer(bytes(inner), False))


def test_pmtu_disc_off_leaves_nat_and_dr_answering() -> None:
    """Only IP_VS_RT_MODE_TUNNEL skips the check: NAT still answers too big."""
    d = director(nat(), pmtu_disc="0")
    for svc in d.services:
        for dest in svc.dests:
            dest.route = Route(ifindex=3, source=socket.inet_aton(SOURCE), mtu=1000)
    d.hook_in(_df(tcp(CLIENT, VIP, 40000, 80, SYN)), 0.0)
    action, packet = d.hook_in(_df(tcp(CLIENT, VIP, 40000, 80, ACK, b"y" * 1200)), 1.0)
    assert action == SEND and dpkt.ip.IP(bytes(packet)).data.data.mtu == 1000


# -- run_estimation (ip_vs_est.c ip_vs_estimation_kthread: "if
#    (sysctl_run_estimation(ipvs) && kd->tick_len[row]) ip_vs_tick_estimation(kd, row)")


def test_run_estimation_off_freezes_the_rates_and_the_first_step_back_sees_it_all() -> None:
    d = director(nat())
    timer = estimator.RateTimer()
    estimator.estimate(d, timer, 0.0)  # arms the timer
    d.totals.conns += 10
    assert estimator.estimate(d, timer, 2.0)
    assert d.totals.est.cps == 1280  # 0 + (10 << 9) >> 2
    d.sysctls = d.sysctls.updated({"run_estimation": "0"})
    d.totals.conns += 10
    assert not estimator.estimate(d, timer, 4.0)
    assert d.totals.est.cps == 1280 and d.totals.est.read().cps == 1
    d.totals.conns += 10
    d.sysctls = d.sysctls.updated({"run_estimation": "1"})
    assert estimator.estimate(d, timer, 6.0)
    # 20 connections in one step since the last: 1280 + ((20 << 9) - 1280) >> 2
    assert d.totals.est.cps == 1280 + ((20 << 9) - 1280 >> 2)


# -- conntrack: a userspace director's table is its own


def test_conntrack_is_zero_and_one_is_refused_with_a_reason() -> None:
    assert Sysctls().conntrack is False
    assert Sysctls().updated({"conntrack": "0"}).conntrack is False
    with pytest.raises(ValueError, match="conntrack takes only 0: director keeps"):
        Sysctls().updated({"conntrack": "1"})


def test_the_kernels_defaults() -> None:
    """Documentation/networking/ipvs-sysctl.rst: pmtu_disc and run_estimation default
    to 1, the others to 0 (schedule_icmp's is ip_vs_control_net_init_sysctl's 0)."""
    s = Sysctls()
    assert (s.pmtu_disc, s.run_estimation) == (True, True)
    assert not any((s.schedule_icmp, s.nat_icmp_send, s.conntrack))


# -- cache_bypass (ip_vs_leave: "if (sysctl_cache_bypass(ipvs) && svc->fwmark &&
#    !(iph->hdr_flags & (IP_VS_HDR_INVERSE | IP_VS_HDR_ICMP)) &&
#    ip_vs_addr_is_unicast(net, svc->af, &iph->daddr))", ip_vs_bypass_xmit)

ORIGIN = "198.51.100.80"  # an origin server the transparent cache stands in front of
MARK = 7


def _cache(*dests: str, **sysctls: str) -> Director:
    conf = ServiceConf("fwm", "", 0, fwmark=MARK,
                       dests=tuple(DestConf(rs, 0, "droute") for rs in dests))  # fmt: skip
    d = director(conf, **sysctls)
    d.local_addrs = frozenset({socket.inet_aton(VIP), socket.inet_aton(SOURCE)})
    return d


def _is_port_unreachable(verdict: tuple[int, object]) -> bool:
    action, data = verdict
    if action != SEND or not isinstance(data, bytearray):
        return False
    icmp = dpkt.ip.IP(bytes(data)).data
    return (icmp.type, icmp.code) == (3, 3)


def test_cache_bypass_off_no_cache_left_is_port_unreachable() -> None:
    d = _cache()
    assert _is_port_unreachable(d.hook_in(tcp(CLIENT, ORIGIN, 40000, 80, SYN), 0.0, MARK))


def test_cache_bypass_on_the_flow_goes_on_to_its_origin_server_unchanged() -> None:
    """The entry has no real server (0.0.0.0:0) and counts nothing (ip_vs_in_stats
    needs a cp->dest); the flow stays bypassed when a cache comes back, while a new
    client is scheduled to it.  Unchanged but for the hop ip_vs_bypass_xmit's
    __ip_vs_get_out_rt takes (decrement_ttl: TTL 61 -> 60)."""
    d = _cache(cache_bypass="1")
    syn = tcp(CLIENT, ORIGIN, 40000, 80, SYN)
    assert d.hook_in(bytearray(syn), 0.0, MARK) == (SEND, tcp(CLIENT, ORIGIN, 40000, 80, SYN,
                                                              ttl=60))  # fmt: skip
    (conn,) = d.conns
    assert (conn.daddr, conn.dport) == (bytes(4), 0)
    svc = next(iter(d.services))
    assert (svc.stats.conns, svc.stats.inpkts, d.totals.inpkts) == (0, 0, 0)
    conf = ServiceConf("fwm", "", 0, fwmark=MARK, dests=(DestConf(RS1, 0, "droute"),))
    d.configure(Config(services=(conf,)))
    for dest in svc.dests:
        dest.route = Route(ifindex=3, source=socket.inet_aton(SOURCE), mtu=1500)
    ack = tcp(CLIENT, ORIGIN, 40000, 80, ACK, b"GET /")
    older = tcp(CLIENT, ORIGIN, 40000, 80, ACK, b"GET /", ttl=60)
    assert d.hook_in(bytearray(ack), 1.0, MARK) == (SEND, older)
    assert d.hook_in(tcp("203.0.113.11", ORIGIN, 40000, 80, SYN), 1.0, MARK)[0] == DIRECT
    assert svc.dests[0].stats.conns == 1 and svc.stats.inpkts == 1


def test_cache_bypass_leaves_local_destinations_and_other_services_refused() -> None:
    """A destination of the director's own is no RTN_UNICAST one; one not known yet
    (no addresses from the shell) is not bypassed either; only firewall-mark services
    bypass (svc->fwmark)."""
    d = _cache(cache_bypass="1")
    assert _is_port_unreachable(d.hook_in(tcp(CLIENT, VIP, 40000, 80, SYN), 0.0, MARK))
    group = udp(CLIENT, "239.1.1.1", 5000, 53, b"q")
    assert d.hook_in(bytearray(group), 0.0, MARK) != (SEND, group)  # not unicast
    d.local_addrs = None
    assert _is_port_unreachable(d.hook_in(tcp(CLIENT, ORIGIN, 40000, 80, SYN), 0.0, MARK))
    plain = director(ServiceConf("tcp", VIP, 80, dests=()), cache_bypass="1")
    plain.local_addrs = frozenset()
    assert _is_port_unreachable(plain.hook_in(tcp(CLIENT, VIP, 40000, 80, SYN), 0.0))
    assert len(d.conns) == len(plain.conns) == 0
