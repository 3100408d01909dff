#!/bin/bash
# ipvsadm 1.31 and keepalived 2.2.7 with IPv6 services, run on the IPVS oracle VM
# (../shared/ipvs-vm: Debian 12, kernel 6.1.0-57):
#   RESULTS=/tmp/out ../shared/ipvs-vm/run-job.sh tests/ctl/oracle/ipvsadm_v6.sh 400
# Its output is ipvsadm_v6.out beside this file; tests/ctl/test_ipv6_ctl.py takes its
# expected text from there.  Not run by the test suite (a boot under TCG takes a minute).
# Some of its client connections fail (tracebacks in the output: only rs 2001:db8:2::2:8080
# exists and listens); they still leave the IPv6 entries ipvsadm -Lcn lists, which is all
# the capture is for.  The test reads past those tracebacks.
. /share/lib.sh
modprobe ip_vs 2>/dev/null
for m in ip_vs_rr ip_vs_sh ip_vs_wlc ip6_tunnel tunnel6; do modprobe $m 2>/dev/null; done
mkns c; mkns d; mkns r
link c eth0 d c0
link d r0 r eth0
for n in c d r; do for k in all default; do inns $n sysctl -qw net.ipv6.conf.$k.accept_dad=0; done; done
inns c ip addr add 2001:db8:1::10/64 dev eth0 nodad
inns c ip addr add 2001:db8:1::11/64 dev eth0 nodad
inns c ip -6 route add default via 2001:db8:1::1
inns d ip addr add 2001:db8:1::1/64 dev c0 nodad
inns d ip addr add 2001:db8:1::100/64 dev c0 nodad
inns d ip addr add 2001:db8:2::1/64 dev r0 nodad
inns d sysctl -qw net.ipv6.conf.all.forwarding=1
inns r ip addr add 2001:db8:2::2/64 dev eth0 nodad
inns r ip -6 route add default via 2001:db8:2::1
inns d ip addr add 203.0.113.1/24 dev c0
serve_name r :: 8080 r1
sleep 1
D="ip netns exec d ipvsadm"
banner services
run $D -A -t [2001:db8:1::100]:80 -s rr
run $D -a -t [2001:db8:1::100]:80 -r [2001:db8:2::2]:8080 -m
run $D -a -t [2001:db8:1::100]:80 -r [2001:db8:2::3]:80 -m -w 2 -x 10 -y 5
run $D -A -u [2001:db8:1::100]:53 -s sh -p 600 -M 64
run $D -a -u [2001:db8:1::100]:53 -r [2001:db8:2::2]:53 -g
run $D -A -f 1 -6 -s wlc -p
run $D -a -f 1 -6 -r 2001:db8:2::2 -g
run $D -a -f 1 -6 -r [2001:db8:2::3]:0 -i
run $D -A -f 2 -s rr
run $D -A -t 203.0.113.5:80 -s rr
run $D -a -t 203.0.113.5:80 -r [2001:db8:3::2]:80 -i; echo "exit $?"
run $D -a -t 203.0.113.5:80 -r [2001:db8:3::3]:80 -m; echo "exit $?"
run $D -a -t 203.0.113.5:80 -r [2001:db8:3::4]:80 -g; echo "exit $?"
run $D -a -t [2001:db8:1::100]:80 -r 198.18.0.2:80 -m; echo "exit $?"
run $D -a -t [2001:db8:1::100]:80 -r 198.18.0.3:80 -i; echo "exit $?"
run $D -a -f 2 -r [2001:db8:2::9] -g; echo "exit $?"
run $D -A -t [2001:db8:1::101]:443 -s wlc -p 300 -M 64 -o; echo "exit $?"
run $D -A -u [2001:db8:1::101]:443 -s wlc -p 300 -M 48 -o; echo "exit $?"
run $D -A -t [2001:db8:1::102]:80 -p 300 -M 129; echo "exit $?"
run $D -A -t [2001:db8:1::102]:80 -p 300 -M 0; echo "exit $?"
run $D -A -t [2001:db8:1::102]:80 -p 300 -M ffff:ffff::; echo "exit $?"
run $D -A -t [2001:db8:1::102]:80 -p 300 -M 255.255.255.0; echo "exit $?"
run $D -A -t 203.0.113.6:80 -p 300 -M 24; echo "exit $?"
run $D -A -t [2001:db8:1::103]:80 -M 64; echo "exit $?"
run $D -A -t 2001:db8:1::104:80; echo "exit $?"
run $D -A -t [2001:db8:1::105]; echo "exit $?"
run $D -A -t [2001:db8:1::106]:80 -p; echo "exit $?"
run $D -A -t [2001:db8:1::107]:80 -6; echo "exit $?"
run $D -A -t [2001:DB8:1:0::108]:80; echo "exit $?"
run $D -A -f 3 -6 -s rr -p 100 -M 56; echo "exit $?"
run $D -A -f 1 -s rr; echo "exit $?"
run $D -A -t [2001:db8:1::100]:80 -s rr; echo "exit $?"
banner lists
run $D -L -n
run $D -L
run $D -S -n
run $D -S
run $D -L -n --stats
run $D -L -n --rate
run $D -L -n --thresholds
run $D -L -n --persistent-conn
run $D -L -n --exact --stats
run $D -L -n -t [2001:db8:1::100]:80
run $D -L -n -f 1 -6
run $D -L -n -f 1; echo "exit $?"
run $D -L -n -f 2 -6; echo "exit $?"
run $D -L -n -u [2001:db8:1::100]:53
run $D -d -f 1 -6 -r [2001:db8:2::3]; echo "exit $?"
run $D -d -f 1 -r 2001:db8:2::2; echo "exit $?"
run $D -e -t [2001:db8:1::100]:80 -r [2001:db8:2::3]:80 -m -w 5; echo "exit $?"
run $D -D -t [2001:db8:1::101]:443; echo "exit $?"
banner traffic
for i in 1 2 3 4; do inns c python3 -c "
import socket
s=socket.create_connection(('2001:db8:1::100',80),timeout=2,source_address=('2001:db8:1::1$((i%2))',0))
s.sendall(b'GET / HTTP/1.0\r\n\r\n'); print(s.recv(100)); s.close()" ; done
inns c python3 -c "
import socket
s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM); s.bind(('2001:db8:1::10',5353)); s.sendto(b'x',('2001:db8:1::100',53))
s2=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM); s2.bind(('2001:db8:1::11',5354)); s2.sendto(b'x',('2001:db8:1::100',53))"
inns c python3 -c "
import socket,time
s=socket.create_connection(('2001:db8:1::100',80),timeout=2)
open('/tmp/held','w').write('x'); time.sleep(6)" &
sleep 1.5
run $D -L -n -c
run $D -L -n -c --persistent-conn
run $D -L -c
run $D -L -n --stats
run $D -L -n --stats --exact
run $D -L -n --persistent-conn
run $D -L -n
cat /proc/net/ip_vs_conn
run $D -L -n --timeout
wait
banner restore
$D -S -n > /tmp/saved
run $D -C
run $D -R < /tmp/saved; echo "exit $?"
run $D -S -n
banner keepalived
$D -C
cat > /tmp/k.conf <<'K'
global_defs {
  router_id lab
}
virtual_server 2001:db8:1::100 80 {
  lb_algo rr
  lb_kind NAT
  protocol TCP
  persistence_timeout 100
  persistence_granularity 64
  real_server 2001:db8:2::2 8080 {
    weight 3
  }
  real_server 2001:db8:2::3 8080 {
  }
}
virtual_server [2001:db8:1::101]:443 {
  lb_algo wlc
  lb_kind DR
  protocol TCP
  real_server 2001:db8:2::2 443 {
  }
}
virtual_server fwmark 7 {
  ip_family inet6
  lb_algo rr
  lb_kind TUN
  real_server 2001:db8:2::4 0 {
  }
}
virtual_server fwmark 8 {
  lb_algo rr
  lb_kind TUN
  real_server 2001:db8:2::5 0 {
  }
}
virtual_server 203.0.113.7 80 {
  lb_algo rr
  lb_kind TUN
  protocol TCP
  real_server 2001:db8:3::2 80 {
  }
}
K
inns d keepalived -t -f /tmp/k.conf; echo "keepalived -t exit $?"
inns d keepalived -n -l -D -C -f /tmp/k.conf -p /tmp/k.pid -c /tmp/kc.pid > /tmp/k.log 2>&1 &
KP=$!
sleep 4
run $D -S -n
run $D -L -n
kill $KP; sleep 1
cat /tmp/k.log | head -60
