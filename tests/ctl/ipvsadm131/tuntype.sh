#!/bin/bash
# Capture kernel IPVS GUE/GRE encapsulation, listings and saves.
. /share/lib.sh
modprobe ip_vs; modprobe ip_vs_rr
mkns c; mkns d; mkns r
link c c0 d d0
link d d1 r r0
inns c ip addr add 198.51.100.2/24 dev c0; inns c ip route add default via 198.51.100.1
inns c ip -6 addr add 2001:db8:a::2/64 dev c0 nodad; inns c ip -6 route add default via 2001:db8:a::1
inns d ip addr add 198.51.100.1/24 dev d0; inns d ip addr add 198.18.0.1/24 dev d1
inns d ip -6 addr add 2001:db8:a::1/64 dev d0 nodad; inns d ip -6 addr add 2001:db8:2::1/64 dev d1 nodad
inns d ip addr add 203.0.113.7/32 dev lo; inns d ip -6 addr add 2001:db8:1::100/128 dev lo nodad
inns d sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
for a in 3 4 5 6 7 8 9; do inns r ip addr add 198.18.0.$a/24 dev r0; inns r ip -6 addr add 2001:db8:2::$a/64 dev r0 nodad; done
inns r ip route add default via 198.18.0.1
cat /proc/sys/net/ipv4/ip_local_port_range
inns d ethtool -k d0 | grep -i checksum
A="inns d ipvsadm"
$A -A -t 203.0.113.7:80 -s rr; $A -a -t 203.0.113.7:80 -r 198.18.0.3 -i --tun-type gue --tun-port 6080 --tun-nocsum
$A -A -t 203.0.113.7:81 -s rr; $A -a -t 203.0.113.7:81 -r 198.18.0.4 -i --tun-type gue --tun-port 6081 --tun-csum
$A -A -t 203.0.113.7:82 -s rr; $A -a -t 203.0.113.7:82 -r 198.18.0.5 -i --tun-type gue --tun-port 6082 --tun-remcsum
$A -A -t 203.0.113.7:83 -s rr; $A -a -t 203.0.113.7:83 -r 198.18.0.6 -i --tun-type gre
$A -A -t 203.0.113.7:84 -s rr; $A -a -t 203.0.113.7:84 -r 198.18.0.7 -i --tun-type gre --tun-csum
$A -A -t 203.0.113.7:85 -s rr; $A -a -t 203.0.113.7:85 -r 198.18.0.8 -i --tun-type gue --tun-port 6085
$A -A -t 203.0.113.7:86 -s rr; $A -a -t 203.0.113.7:86 -r 198.18.0.9 -i -w 3 -x 10 -y 2
$A -a -t 203.0.113.7:86 -r 198.18.0.3 -m -w 2
$A -A -u 203.0.113.7:53 -s rr; $A -a -u 203.0.113.7:53 -r 198.18.0.4 -i --tun-type gue --tun-port 6053 --tun-csum
$A -A -t [2001:db8:1::100]:80 -s rr; $A -a -t [2001:db8:1::100]:80 -r [2001:db8:2::3] -i --tun-type gue --tun-port 6080 --tun-nocsum
$A -A -t [2001:db8:1::100]:81 -s rr; $A -a -t [2001:db8:1::100]:81 -r [2001:db8:2::4] -i --tun-type gue --tun-port 6081 --tun-csum
$A -A -t [2001:db8:1::100]:82 -s rr; $A -a -t [2001:db8:1::100]:82 -r [2001:db8:2::5] -i --tun-type gue --tun-port 6082 --tun-remcsum
$A -A -t [2001:db8:1::100]:83 -s rr; $A -a -t [2001:db8:1::100]:83 -r [2001:db8:2::6] -i --tun-type gre
$A -A -t [2001:db8:1::100]:84 -s rr; $A -a -t [2001:db8:1::100]:84 -r [2001:db8:2::7] -i --tun-type gre --tun-csum
$A -A -t 203.0.113.7:90 -s rr; $A -a -t 203.0.113.7:90 -r [2001:db8:2::8] -i --tun-type gue --tun-port 6090 --tun-csum
$A -A -t 203.0.113.7:91 -s rr; $A -a -t 203.0.113.7:91 -r [2001:db8:2::9] -i --tun-type gre --tun-csum
$A -A -t [2001:db8:1::100]:90 -s rr; $A -a -t [2001:db8:1::100]:90 -r 198.18.0.8 -i --tun-type gue --tun-port 6090 --tun-remcsum
$A -A -t [2001:db8:1::100]:91 -s rr; $A -a -t [2001:db8:1::100]:91 -r 198.18.0.9 -i --tun-type gre
banner "ipvsadm -Ln"; $A -Ln
banner "ipvsadm -Ln --tun-info"; $A -Ln --tun-info
banner "ipvsadm -L --tun-info"; $A -L --tun-info
banner "ipvsadm -Sn"; $A -Sn
banner "ipvsadm -Ln --tun-info --stats"; $A -Ln --tun-info --stats; echo "rc $?"
banner "ipvsadm -Ln --tun-info --thresholds"; $A -Ln --tun-info --thresholds; echo "rc $?"
banner "ipvsadm -Ln --tun-info -t 203.0.113.7:80"; $A -Ln --tun-info -t 203.0.113.7:80; echo "rc $?"
banner "errors"
for args in "-a -t 203.0.113.7:80 -r 198.18.0.2 -i --tun-type gue" "-a -t 203.0.113.7:80 -r 198.18.0.2 -i --tun-type gre --tun-remcsum" "-a -t 203.0.113.7:80 -r 198.18.0.2 -i --tun-type gre --tun-port 1" "-a -t 203.0.113.7:80 -r 198.18.0.2 -i --tun-type gue --tun-port 0" "-a -t 203.0.113.7:80 -r 198.18.0.2 -i --tun-type gue --tun-port 1 --tun-csum --tun-nocsum" "-a -t 203.0.113.7:80 -r 198.18.0.2 -i --tun-port 6080" "-a -t 203.0.113.7:80 -r 198.18.0.2 -i --tun-type vxlan" "-e -t 203.0.113.7:80 -r 198.18.0.3 -i --tun-type gre" "-e -t 203.0.113.7:80 -r 198.18.0.3 -i"; do
  echo "### ipvsadm $args"; $A $args; echo "rc $?"
done
banner "after edits"; $A -Sn
$A -e -t 203.0.113.7:80 -r 198.18.0.3 -i --tun-type gue --tun-port 6080 --tun-nocsum
inns d tcpdump -i d1 -U -s 0 -w /share/out/tun.pcap 2>/dev/null & PIDS+=($!)
inns d tcpdump -i d0 -U -s 0 -w /share/out/cli.pcap 2>/dev/null & PIDS+=($!)
sleep 2
cat > /tmp/raw.py <<'PY'
import socket, struct, sys
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b)//2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
def syn4(dport, sport):
    src, dst = socket.inet_aton("198.51.100.2"), socket.inet_aton("203.0.113.7")
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 0x11223344, 0, 5 << 4, 0x02, 64240, 0, 0)
    c = csum(src + dst + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)
    tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0x10, 20 + len(tcp), 0x1234, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return ip + tcp
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for p in [80, 81, 82, 83, 84, 85, 90, 91]:
    s.sendto(syn4(p, 40000 + p), ("203.0.113.7", 0))
# IPv6: an unconnected raw TCP socket sends our TCP header, kernel builds the IPv6 header
s6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_TCP)
src6 = socket.inet_pton(socket.AF_INET6, "2001:db8:a::2"); dst6 = socket.inet_pton(socket.AF_INET6, "2001:db8:1::100")
for p in [80, 81, 82, 83, 84, 90, 91]:
    tcp = struct.pack("!HHIIBBHHH", 41000 + p, p, 0x55667788, 0, 5 << 4, 0x02, 64240, 0, 0)
    c = csum(src6 + dst6 + struct.pack("!IxxxB", len(tcp), 6) + tcp)
    tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
    s6.sendto(tcp, ("2001:db8:1::100", 0))
PY
inns c python3 /tmp/raw.py; sleep 0.5
# real sockets: CHECKSUM_PARTIAL over veth
for p in 80 81 82 83 84; do inns c timeout 1 bash -c "exec 3<>/dev/tcp/203.0.113.7/$p" 2>/dev/null; inns c timeout 1 bash -c "exec 3<>/dev/tcp/2001:db8:1::100/$p" 2>/dev/null; done &
for p in 90 91; do inns c timeout 1 bash -c "exec 3<>/dev/tcp/203.0.113.7/$p" 2>/dev/null; inns c timeout 1 bash -c "exec 3<>/dev/tcp/2001:db8:1::100/$p" 2>/dev/null; done
wait
inns c python3 -c "
import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b'x'*32, ('203.0.113.7', 53))"
sleep 1
banner "conns"; $A -Lnc
sleep 1
kill ${PIDS[0]} ${PIDS[1]}; sleep 0.5
inns d tcpdump -nn -v -r /share/out/tun.pcap 2>/dev/null | head -120
