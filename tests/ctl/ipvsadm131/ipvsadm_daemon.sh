#!/bin/bash
# ipvsadm 1.31: the sync daemon commands and -L --daemon.
modprobe ip_vs 2>/dev/null
ip link set lo up
c() { echo "### $*"; "$@" > /tmp/o 2> /tmp/e; rc=$?; echo "--- stdout"; cat /tmp/o; echo "--- stderr"; cat /tmp/e; echo "--- rc $rc"; }
c ipvsadm --start-daemon master --mcast-interface nosuch0
c ipvsadm --start-daemon master --mcast-interface lo
c ipvsadm -L --daemon
c ipvsadm --start-daemon master --mcast-interface lo
c ipvsadm --start-daemon backup --mcast-interface lo --syncid 5 --mcast-port 8849 --mcast-ttl 2
c ipvsadm -L --daemon
c ipvsadm --stop-daemon master
c ipvsadm -L --daemon
c ipvsadm --stop-daemon master
c ipvsadm --stop-daemon backup
c ipvsadm --start-daemon primary
c ipvsadm --stop-daemon primary
c ipvsadm --start-daemon master --syncid 256
c ipvsadm --start-daemon master --mcast-group 198.51.100.7
c ipvsadm -L --daemon
