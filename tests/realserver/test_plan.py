"""``dirctl realserver`` planning: host state + request -> actions, and their undoing."""

from __future__ import annotations

import pytest

from director.realserver import plan
from director.realserver.plan import (
    AddAddress,
    CreateLink,
    DeleteAddress,
    DeleteLink,
    Host,
    Link,
    Request,
    RestoreSysctl,
    SetLink,
    StartDecap,
    State,
    StopDecap,
    WriteSysctl,
    conf,
)

VIP = "203.0.113.5"


def host(
    *,
    links: dict[str, Link] | None = None,
    addrs: set[tuple[str, str]] | None = None,
    sysctls: dict[str, int] | None = None,
    modules: frozenset[str] = frozenset(),
    decap_alive: bool = False,
) -> Host:
    links = links or {"lo": Link("", True), "eth0": Link("veth", True)}
    values = {conf(d, k): 0 for d in ("all", *links) for k in plan_keys()}
    values.update(sysctls or {})
    return Host(
        links=links,
        addrs=frozenset(addrs or {("lo", "127.0.0.1"), ("eth0", "198.18.0.2")}),
        sysctls=values,
        modules=modules,
        decap_alive=decap_alive,
    )


def plan_keys() -> tuple[str, ...]:
    return ("arp_ignore", "arp_announce", "rp_filter")


def apply(h: Host, state: State, actions: list[plan.Action]) -> tuple[Host, State]:
    """A model of the host shell: what each action does to ``Host``."""
    links, addrs, sysctls = dict(h.links), set(h.addrs), dict(h.sysctls)
    alive = h.decap_alive
    for action in actions:
        pid = None
        match action:
            case CreateLink(name=name, kind=kind):
                links[name] = Link(kind, False)
                sysctls.update({conf(name, k): 0 for k in plan_keys()})
            case DeleteLink(name=name):
                del links[name]
                addrs = {(d, a) for d, a in addrs if d != name}
                sysctls = {k: v for k, v in sysctls.items() if f"/{name}/" not in k}
            case SetLink(name=name, up=up):
                links[name] = Link(links[name].kind, up)
            case AddAddress(dev=dev, addr=addr):
                addrs.add((dev, addr))
            case DeleteAddress(dev=dev, addr=addr):
                addrs.remove((dev, addr))
            case WriteSysctl(path=path, value=value) | RestoreSysctl(path=path, value=value):
                sysctls[path] = value
            case StartDecap():
                alive, pid = True, 4242
            case StopDecap():
                alive = False
        state = plan.recorded(state, action, pid)
    return Host(links, frozenset(addrs), sysctls, h.modules, alive), state


def up_then_down(h: Host, req: Request) -> tuple[Host, Host, State]:
    state, actions = plan.plan_up(h, req, None)
    after_up, state = apply(h, state, actions)
    after_down, _ = apply(after_up, state, plan.plan_down(after_up, state))
    return after_up, after_down, state


def test_dr_on_lo_without_the_dummy_module() -> None:
    state, actions = plan.plan_up(host(), Request("dr", (VIP,)), None)
    assert state.vip_dev == "lo" and state.mode == "dr"
    assert actions == [
        WriteSysctl(conf("all", "arp_ignore"), 1, 0),
        WriteSysctl(conf("all", "arp_announce"), 2, 0),
        WriteSysctl(conf("lo", "arp_ignore"), 1, 0),
        WriteSysctl(conf("lo", "arp_announce"), 2, 0),
        AddAddress("lo", VIP),
    ]


def test_dr_on_a_dummy_device_where_the_module_is_loaded() -> None:
    _, actions = plan.plan_up(host(modules=frozenset({"dummy"})), Request("dr", (VIP,)), None)
    assert actions == [
        CreateLink("director0", "dummy"),
        WriteSysctl(conf("all", "arp_ignore"), 1, 0),
        WriteSysctl(conf("all", "arp_announce"), 2, 0),
        WriteSysctl(conf("director0", "arp_ignore"), 1, None),
        WriteSysctl(conf("director0", "arp_announce"), 2, None),
        SetLink("director0", up=True),
        AddAddress("director0", VIP),
    ]


def test_dr_relaxes_strict_rp_filter_to_loose_and_leaves_stricter_arp_alone() -> None:
    h = host(sysctls={conf("all", "rp_filter"): 1, conf("eth0", "rp_filter"): 1,
                      conf("all", "arp_ignore"): 2})  # fmt: skip
    _, actions = plan.plan_up(h, Request("dr", (VIP,)), None)
    assert WriteSysctl(conf("all", "rp_filter"), 2, 1) in actions
    assert WriteSysctl(conf("eth0", "rp_filter"), 2, 1) in actions
    assert not [
        a for a in actions if isinstance(a, WriteSysctl) and a.path.endswith("lo/rp_filter")
    ]
    assert not [a for a in actions if getattr(a, "path", "") == conf("all", "arp_ignore")]


def test_tun_without_ipip_uses_the_userspace_decapsulator() -> None:
    h = host(sysctls={conf("all", "rp_filter"): 1})
    state, actions = plan.plan_up(h, Request("tun", (VIP, "203.0.113.6")), None)
    assert state.mode == "tun-userspace" and state.vip_dev == "dirtun0"
    assert actions == [
        CreateLink("dirtun0", "tun"),
        WriteSysctl(conf("all", "arp_ignore"), 1, 0),
        WriteSysctl(conf("all", "arp_announce"), 2, 0),
        WriteSysctl(conf("all", "rp_filter"), 2, 1),
        WriteSysctl(conf("dirtun0", "rp_filter"), 0, None),
        SetLink("dirtun0", up=True),
        AddAddress("dirtun0", VIP),
        AddAddress("dirtun0", "203.0.113.6"),
        StartDecap("dirtun0", (VIP, "203.0.113.6")),
    ]


def test_tun_with_the_kernel_ipip_module_raises_tunl0() -> None:
    links = {"lo": Link("", True), "eth0": Link("veth", True), "tunl0": Link("ipip", False)}
    h = host(links=links, modules=frozenset({"ipip"}), sysctls={conf("tunl0", "rp_filter"): 1})
    state, actions = plan.plan_up(h, Request("tun", (VIP,)), None)
    assert state.mode == "tun-kernel" and state.vip_dev == "lo"
    assert SetLink("tunl0", up=True) in actions
    assert WriteSysctl(conf("tunl0", "rp_filter"), 0, 1) in actions
    assert not [a for a in actions if isinstance(a, StartDecap)]
    _, after_down, _ = up_then_down(h, Request("tun", (VIP,)))
    assert after_down == h


@pytest.mark.parametrize(
    "req",
    [Request("dr", (VIP,)), Request("tun", (VIP,)), Request("tun", (VIP, "198.51.100.7"))],
)
@pytest.mark.parametrize("modules", [frozenset(), frozenset({"dummy"})])
def test_up_twice_changes_nothing_and_down_restores_the_host(
    req: Request, modules: frozenset[str]
) -> None:
    before = host(modules=modules, sysctls={conf("all", "rp_filter"): 1})
    state, actions = plan.plan_up(before, req, None)
    after_up, state = apply(before, state, actions)
    again_state, again = plan.plan_up(after_up, req, state)
    assert again == [] and again_state == state
    after_down, final = apply(after_up, state, plan.plan_down(after_up, state))
    assert after_down == before
    assert final.created_links == [] and final.added_addrs == [] and final.sysctls == {}


def test_an_address_the_host_already_had_is_neither_added_nor_removed() -> None:
    before = host(addrs={("lo", "127.0.0.1"), ("lo", VIP)})
    after_up, after_down, state = up_then_down(before, Request("dr", (VIP,)))
    assert state.added_addrs == []
    assert ("lo", VIP) in after_up.addrs and ("lo", VIP) in after_down.addrs


def test_down_leaves_a_sysctl_that_someone_changed_since() -> None:
    before = host()
    state, actions = plan.plan_up(before, Request("dr", (VIP,)), None)
    after_up, state = apply(before, state, actions)
    sysctls = {**after_up.sysctls, conf("all", "arp_ignore"): 2}
    changed = Host(after_up.links, after_up.addrs, sysctls, after_up.modules)
    actions = plan.plan_down(changed, state)
    assert RestoreSysctl(conf("all", "arp_ignore"), 0) not in actions
    assert RestoreSysctl(conf("all", "arp_announce"), 0) in actions


def test_more_vips_later_restart_the_decapsulator_with_all_of_them() -> None:
    h = host()
    state, actions = plan.plan_up(h, Request("tun", (VIP,)), None)
    h, state = apply(h, state, actions)
    state2, actions = plan.plan_up(h, Request("tun", ("203.0.113.6",)), state)
    assert actions == [
        AddAddress("dirtun0", "203.0.113.6"),
        StopDecap(4242),
        StartDecap("dirtun0", (VIP, "203.0.113.6")),
    ]
    assert state2.vips == [VIP, "203.0.113.6"]


def test_a_dead_decapsulator_is_started_again() -> None:
    h = host()
    state, actions = plan.plan_up(h, Request("tun", (VIP,)), None)
    h, state = apply(h, state, actions)
    dead = Host(h.links, h.addrs, h.sysctls, h.modules, decap_alive=False)
    assert plan.plan_up(dead, Request("tun", (VIP,)), state)[1] == [StartDecap("dirtun0", (VIP,))]


def test_state_round_trips_through_json() -> None:
    h = host(sysctls={conf("all", "rp_filter"): 1})
    state, actions = plan.plan_up(h, Request("tun", (VIP,)), None)
    _, state = apply(h, state, actions)
    assert State.from_json(state.to_json()) == state


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (Request("dr", ("1.2.3",)), "not an IPv4 or IPv6 address"),
        (Request("dr", ("2001:db8::1::2",)), "not an IPv4 or IPv6 address"),
        (Request("dr", ("fe80::1",)), "not a unicast"),
        (Request("dr", ("ff02::1",)), "not a unicast"),
        (Request("dr", ("::1",)), "not a unicast"),
        (Request("dr", ("::ffff:203.0.113.5",)), "not a unicast"),
        (Request("tun", ("2001:db8:1::100",), "kernel"), "no IPv6 tunnel"),
        (Request("dr", ("0.0.0.0",)), "not a unicast"),
        (Request("dr", ("224.0.0.1",)), "not a unicast"),
        (Request("dr", ("127.0.0.2",)), "not a unicast"),
        (Request("dr", ()), "at least one"),
        (Request("dr", (VIP,), "userspace"), "--decap is for --method tun"),
        (Request("tun", (VIP,), "kernel"), "ipip module is not loaded"),
    ],
)
def test_bad_requests(req: Request, message: str) -> None:
    with pytest.raises(plan.PlanError, match=message):
        plan.plan_up(host(), req, None)


def test_changing_method_needs_down_first() -> None:
    h = host()
    state, actions = plan.plan_up(h, Request("dr", (VIP,)), None)
    h, state = apply(h, state, actions)
    with pytest.raises(plan.PlanError, match="already up for dr"):
        plan.plan_up(h, Request("tun", (VIP,)), state)


VIP6 = "2001:db8:1::100"


def test_dr_for_an_ipv6_vip_puts_it_on_lo_and_leaves_arp_alone() -> None:
    """An IPv6 VIP needs no sysctl: Linux answers neighbour solicitations only for the
    receiving device's addresses (ndisc_recv_ns); ARP and rp_filter are IPv4's."""
    h = host()
    state, actions = plan.plan_up(h, Request("dr", ("2001:DB8:1:0::100",)), None)
    assert actions == [AddAddress("lo", VIP6)]
    assert plan.describe(actions[0]) == f"ip addr add {VIP6}/128 dev lo"
    h, state = apply(h, state, actions)
    assert state.vips == [VIP6]
    assert plan.plan_down(h, state) == [DeleteAddress("lo", VIP6)]


def test_an_ipv4_vip_beside_an_ipv6_one_brings_the_arp_settings() -> None:
    h = host()
    state, actions = plan.plan_up(h, Request("dr", (VIP6,)), None)
    h, state = apply(h, state, actions)
    state, actions = plan.plan_up(h, Request("dr", (VIP,)), state)
    assert WriteSysctl(conf("all", "arp_ignore"), 1, 0) in actions
    assert AddAddress("lo", VIP) in actions and state.vips == [VIP6, VIP]


def test_tun_for_an_ipv6_vip_takes_the_decapsulator_even_with_ipip() -> None:
    """The kernel's ipip takes IPv4 in IPv4 only: IPv6 VIPs go to the userspace
    decapsulator, which also takes the IPv4 ones (tunl0 stays down)."""
    h = host(modules=frozenset({"ipip"}), links={"lo": Link("", True), "eth0": Link("veth", True),
                                                 "tunl0": Link("ipip", False)})  # fmt: skip
    state, actions = plan.plan_up(h, Request("tun", (VIP, VIP6)), None)
    assert state.mode == "tun-userspace"
    assert StartDecap("dirtun0", (VIP, VIP6)) in actions
    assert AddAddress("dirtun0", VIP6) in actions
    assert SetLink("tunl0", up=True) not in actions
    kernel, _ = plan.plan_up(h, Request("tun", (VIP,)), None)
    assert kernel.mode == "tun-kernel"
