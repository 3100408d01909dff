"""lblc and lblcr: per-destination-address caches over wlc (ip_vs_lblc.c, ip_vs_lblcr.c).

Where the numbers come from:

* the wlc choice: servers A, B added in that order make the list B, A; with equal
  loads B (met first) wins, and a server with activeconns a and inactconns i has
  overhead 256 * a + i;
* lblc "overloaded": activeconns > weight while some server has activeconns * 2 <
  weight;
* the collector: the timer first runs 60 s after the first call (t = 0 here), then
  every 60 s; the counter starts at 1 and grows by one per run while the table holds
  at most 16384 entries, and the run that finds it at 30 is the full check, so full
  checks fall at t = 1800, 3600, ...; 24 h = 48 * 1800 s;
* bucket of an address: hash_32(addr, 10) = (addr * 0x61C88647 mod 2**32) >> 22; for
  203.0.113.5 = 0xCB007105: 0xCB007105 * 0x61C88647 = 0x4D8A2DA5_B92FF663, and
  0xB92FF663 >> 22 = 740.
"""

from __future__ import annotations

from director.core.packet import Packet
from director.core.sched import create_scheduler
from director.core.sched.lblc import (
    MAX_SIZE,
    CacheEntry,
    LocalityBasedLeastConnection,
    LocalityTable,
    bucket_of,
    hash_32,
)
from director.core.sched.lblcr import LocalityBasedLeastConnectionReplication
from director.core.service import Dest, Service, pack_addr
from director.model.config import ServiceConf

D1 = "198.51.100.1"
D2 = "198.51.100.2"


def _svc(name: str, **weights: int) -> tuple[Service, dict[str, Dest]]:
    conf = ServiceConf("fwm", fwmark=1, scheduler=name)
    svc = Service(key=(0, b"", 1), conf=conf, scheduler=create_scheduler(name))
    named = {}
    for label, weight in weights.items():
        octet = 2 + ord(label) - ord("A")
        dest = Dest(addr=pack_addr(f"198.18.0.{octet}"), port=80, method="droute", weight=weight)
        svc.dests.insert(0, dest)
        named[label] = dest
    return svc, named


def _pkt(daddr: str) -> Packet:
    return Packet(bytearray(40), 6, pack_addr("203.0.113.10"), pack_addr(daddr), 1000, 80, 20, 40)


def _lblc(svc: Service) -> LocalityBasedLeastConnection:
    assert isinstance(svc.scheduler, LocalityBasedLeastConnection)
    return svc.scheduler


def _lblcr(svc: Service) -> LocalityBasedLeastConnectionReplication:
    assert isinstance(svc.scheduler, LocalityBasedLeastConnectionReplication)
    return svc.scheduler


def test_hash_32_by_hand() -> None:
    assert hash_32(0xCB007105, 10) == 740
    assert bucket_of(pack_addr("203.0.113.5")) == 740


# --- lblc ---


def test_lblc_keeps_an_address_on_its_server() -> None:
    svc, d = _svc("lblc", A=1, B=1)
    assert svc.scheduler.schedule(svc, _pkt(D1)) is d["B"]  # wlc, equal loads: B first
    d["B"].activeconns = 1  # now busier than A, but not lblc-overloaded (1 > 1 is false)
    assert svc.scheduler.schedule(svc, _pkt(D1)) is d["B"]
    assert svc.scheduler.schedule(svc, _pkt(D2)) is d["A"]  # a new address: wlc


def test_lblc_moves_an_overloaded_address_only_if_someone_is_below_half() -> None:
    svc, d = _svc("lblc", A=1, B=1)
    assert svc.scheduler.schedule(svc, _pkt(D1)) is d["B"]
    d["B"].activeconns = 2  # 2 > 1 ...
    d["A"].activeconns = 1  # ... but A is not below half (1 * 2 < 1 is false): stay
    assert svc.scheduler.schedule(svc, _pkt(D1)) is d["B"]
    d["A"].activeconns = 0  # now A is: wlc takes A (0 against 512) and the cache follows
    assert svc.scheduler.schedule(svc, _pkt(D1)) is d["A"]
    d["B"].activeconns = 0
    assert svc.scheduler.schedule(svc, _pkt(D1)) is d["A"]


def test_lblc_quiesced_or_removed_cached_server_is_replaced() -> None:
    svc, d = _svc("lblc", A=1, B=1)
    assert svc.scheduler.schedule(svc, _pkt(D1)) is d["B"]
    d["B"].weight = 0
    assert svc.scheduler.schedule(svc, _pkt(D1)) is d["A"]
    d["B"].weight = 1
    d["A"].available = False  # deleted from the service (kept in the trash)
    svc.dests.remove(d["A"])
    assert svc.scheduler.schedule(svc, _pkt(D1)) is d["B"]


def test_lblc_cache_hit_ignores_the_threshold_flag_as_the_kernel_does() -> None:
    # ip_vs_lblc_schedule checks availability, weight and its own overload rule on a
    # cache hit, not IP_VS_DEST_F_OVERLOAD: a cached server over its -x threshold is
    # still returned.  A new address does not get it (wlc skips flagged servers).
    svc, d = _svc("lblc", A=1, B=1)
    assert svc.scheduler.schedule(svc, _pkt(D1)) is d["B"]
    d["B"].overloaded = True
    assert svc.scheduler.schedule(svc, _pkt(D1)) is d["B"]
    assert svc.scheduler.schedule(svc, _pkt(D2)) is d["A"]
    d["A"].overloaded = True
    assert svc.scheduler.schedule(svc, _pkt("198.51.100.3")) is None


def test_lblc_full_check_drops_entries_unused_for_the_expiration() -> None:
    svc, d = _svc("lblc", A=1, B=1)
    sched = _lblc(svc)
    table = sched.table
    assert svc.scheduler.schedule(svc, _pkt(D1), now=0.0) is d["B"]
    table.run_timers(1799.0)  # 29 runs: the counter reaches 30, no full check yet
    assert table.counter == 30
    table.run_timers(1800.0)  # full check: 1800 < 0 + 24 h, kept
    assert pack_addr(D1) in table.entries and table.counter == 1
    table.run_timers(86399.0)
    assert pack_addr(D1) in table.entries
    table.run_timers(86400.0)  # the 48th full check: 86400 >= 0 + 86400
    assert pack_addr(D1) not in table.entries


def test_lblc_expiration_setting_and_a_refreshed_entry() -> None:
    svc, d = _svc("lblc", A=1, B=1)
    sched = _lblc(svc)
    sched.table.expiration = 100.0  # sysctl lblc_expiration
    assert svc.scheduler.schedule(svc, _pkt(D1), now=0.0) is d["B"]
    assert svc.scheduler.schedule(svc, _pkt(D2), now=0.0) is d["B"]
    d["B"].activeconns = 1
    # D2 is looked up again at 1750: lastuse 1750, so it survives the check at 1800.
    assert svc.scheduler.schedule(svc, _pkt(D2), now=1750.0) is d["B"]
    assert svc.scheduler.schedule(svc, _pkt(D1), now=1800.0) is d["A"]  # D1 expired: wlc
    assert svc.scheduler.schedule(svc, _pkt(D2), now=1801.0) is d["B"]


def test_lblc_idle_table_keeps_the_counter_phase() -> None:
    svc, d = _svc("lblc", A=1, B=1)
    table = _lblc(svc).table
    assert svc.scheduler.schedule(svc, _pkt(D1), now=0.0) is d["B"]
    table.entries.clear()
    table.run_timers(10000.0)  # 166 runs at 60..9960 on an empty table: 166 % 30 = 16
    assert table.counter == 17 and table.next_check == 10020.0


def test_partial_check_walks_buckets_from_the_rover() -> None:
    table: LocalityTable[CacheEntry] = LocalityTable()
    table.run_timers(0.0)
    dest = Dest(addr=pack_addr("198.18.0.2"), port=80, method="droute")
    addrs = [pack_addr(f"2001:db8:1::{i >> 16:x}:{i & 0xFFFF:x}") for i in range(MAX_SIZE + 30)]
    for addr in addrs:
        table.entries[addr] = CacheEntry(dest, 0.0)
    # Runs at 60..300: over max_size, so partial checks (the counter stays at 1), but no
    # entry is 6 minutes old: each walks all 1024 buckets and the rover comes back to 0.
    table.run_timers(300.0)
    assert len(table.entries) == MAX_SIZE + 30 and table.rover == 0 and table.counter == 1
    # At 360 every entry is stale; goal (30 * 4) // 3 = 40: whole buckets 1, 2, ... go
    # until 40 or more entries have.
    table.run_timers(360.0)
    by_bucket: dict[int, int] = {}
    for addr in addrs:
        by_bucket[bucket_of(addr)] = by_bucket.get(bucket_of(addr), 0) + 1
    removed, bucket = 0, 0
    while removed < 40:
        bucket += 1
        removed += by_bucket.get(bucket, 0)
    assert table.rover == bucket
    assert len(table.entries) == MAX_SIZE + 30 - removed
    assert all(1 <= bucket_of(a) <= bucket for a in addrs if a not in table.entries)


# --- lblcr ---


def test_lblcr_grows_the_set_when_its_best_member_is_overloaded() -> None:
    svc, d = _svc("lblcr", A=1, B=1)
    sched = _lblcr(svc)
    assert svc.scheduler.schedule(svc, _pkt(D1), now=0.0) is d["B"]
    assert sched.table.entries[pack_addr(D1)].dests == [d["B"]]
    d["B"].activeconns = 1  # not overloaded in lblc's sense: stays
    assert svc.scheduler.schedule(svc, _pkt(D1), now=1.0) is d["B"]
    d["B"].activeconns = 2  # 2 > 1 and A is below half: wlc picks A, added at the head
    assert svc.scheduler.schedule(svc, _pkt(D1), now=2.0) is d["A"]
    entry = sched.table.entries[pack_addr(D1)]
    assert entry.dests == [d["A"], d["B"]] and entry.lastmod == 2.0
    # The set's least loaded member is taken now: A (0) against B (512).
    assert svc.scheduler.schedule(svc, _pkt(D1), now=3.0) is d["A"]
    # set_min skips members that are flagged overloaded or removed.
    d["A"].overloaded = True
    d["B"].activeconns = 0
    assert svc.scheduler.schedule(svc, _pkt(D1), now=4.0) is d["B"]


def test_lblcr_drops_the_busiest_member_after_the_expiration() -> None:
    svc, d = _svc("lblcr", A=1, B=1)
    sched = _lblcr(svc)
    sched.table.expiration = 100.0
    assert svc.scheduler.schedule(svc, _pkt(D1), now=0.0) is d["B"]
    d["B"].activeconns = 2
    assert svc.scheduler.schedule(svc, _pkt(D1), now=10.0) is d["A"]  # set A, B; lastmod 10
    d["B"].activeconns = 0
    entry = sched.table.entries[pack_addr(D1)]
    # At 110 = lastmod + 100 nothing is dropped (the kernel wants strictly after).
    assert svc.scheduler.schedule(svc, _pkt(D1), now=110.0) is d["A"]
    assert len(entry.dests) == 2
    # At 111 the busiest member goes.  Loads are equal (0 and 0), so set_min took the
    # head, A, and set_max (strictly greater only) also settles on A: A is dropped from
    # the set, yet returned, as the kernel returns the pick it made before the drop.
    assert svc.scheduler.schedule(svc, _pkt(D1), now=111.0) is d["A"]
    assert entry.dests == [d["B"]] and entry.lastmod == 111.0
    assert svc.scheduler.schedule(svc, _pkt(D1), now=112.0) is d["B"]


def test_lblcr_no_server_at_all() -> None:
    svc, d = _svc("lblcr", A=0)
    assert svc.scheduler.schedule(svc, _pkt(D1)) is None
    assert not _lblcr(svc).table.entries
    d["A"].weight = 1
    assert svc.scheduler.schedule(svc, _pkt(D1)) is d["A"]
    d["A"].weight = 0  # the only member is quiesced and so is everyone else
    assert svc.scheduler.schedule(svc, _pkt(D1)) is None


def test_lblcr_entries_expire_with_the_full_check() -> None:
    svc, d = _svc("lblcr", A=1)
    assert svc.scheduler.schedule(svc, _pkt(D1), now=0.0) is d["A"]
    table = _lblcr(svc).table
    table.run_timers(86399.0)
    assert pack_addr(D1) in table.entries
    table.run_timers(86400.0)
    assert pack_addr(D1) not in table.entries


def _addr(i: int) -> str:
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


def test_lblc_and_lblcr_tables_are_capped() -> None:
    """ip_vs_lblc_new / ip_vs_lblcr_new: no new entry once the table holds more than
    max_size = IP_VS_LBLC_TAB_SIZE * 16 = 16384 entries (atomic_read(&tbl->entries) >
    tbl->max_size), so it stops at 16385; the server is still chosen and returned.  In
    lblc a cached address whose server is replaced loses its entry first, then gets
    none while the table is over the size."""
    assert MAX_SIZE == 1024 * 16
    for name in ("lblc", "lblcr"):
        svc, _ = _svc(name, A=1, B=1)
        for i in range(MAX_SIZE + 50):
            assert svc.scheduler.schedule(svc, _pkt(_addr(i)), now=0.0) is not None
        assert isinstance(
            svc.scheduler, (LocalityBasedLeastConnection, LocalityBasedLeastConnectionReplication)
        )
        assert len(svc.scheduler.table.entries) == MAX_SIZE + 1
        assert pack_addr(_addr(MAX_SIZE + 1)) not in svc.scheduler.table.entries
    svc, _ = _svc("lblc", A=1, B=1)
    for i in range(MAX_SIZE + 1):
        svc.scheduler.schedule(svc, _pkt(_addr(i)), now=0.0)
    table = _lblc(svc).table
    first = table.entries[pack_addr(_addr(0))].dest
    first.weight = 0  # its cached server is quiesced: wlc picks the other one
    other = svc.scheduler.schedule(svc, _pkt(_addr(0)), now=1.0)
    assert other is not first and other is not None
    assert pack_addr(_addr(0)) in table.entries  # deleted (16384 left), then room again
    assert table.entries[pack_addr(_addr(0))].dest is other


def test_the_expiration_sysctls_reach_the_schedulers() -> None:
    """sysctl_lblc_expiration / sysctl_lblcr_expiration (net.ipv4.vs.lblc_expiration,
    lblcr_expiration, default 24 h): the full check drops entries unused that long."""
    from director.core.engine import Director
    from director.model.config import Config, DestConf

    rs = (DestConf("198.18.0.2", 80, "droute"),)
    d = Director()
    web = ServiceConf("fwm", fwmark=1, scheduler="lblc", dests=rs)
    d.configure(Config(services=(web, ServiceConf("fwm", fwmark=2, scheduler="lblcr", dests=rs))))
    lblc, lblcr = (svc.scheduler for svc in d.services)
    assert isinstance(lblc, LocalityBasedLeastConnection)
    assert isinstance(lblcr, LocalityBasedLeastConnectionReplication)
    assert (lblc.table.expiration, lblcr.table.expiration) == (86400.0, 86400.0)
    d.sysctls = d.sysctls.updated({"lblc_expiration": "100", "lblcr_expiration": "200"})
    assert (lblc.table.expiration, lblcr.table.expiration) == (100.0, 200.0)
    d.configure(Config(services=(ServiceConf("fwm", fwmark=1, scheduler="lblcr", dests=rs),)))
    (fresh,) = (svc.scheduler for svc in d.services)
    assert isinstance(fresh, LocalityBasedLeastConnectionReplication)
    assert fresh.table.expiration == 200.0  # a new scheduler reads the settings too
