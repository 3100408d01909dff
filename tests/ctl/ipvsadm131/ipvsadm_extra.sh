#!/bin/bash
# ipvsadm 1.31: --tun-info, --nosort, -e's defaults, restore of the combined spellings.
modprobe ip_vs 2>/dev/null
c() { echo "### $*"; "$@" > /tmp/o 2> /tmp/e; rc=$?; echo "--- stdout"; cat /tmp/o; echo "--- stderr"; cat /tmp/e; echo "--- rc $rc"; }
c ipvsadm -A -t 203.0.113.7:80 -s rr
c ipvsadm -A -t 203.0.113.5:80 -s wrr
c ipvsadm -a -t 203.0.113.5:80 -r 198.18.0.4:80 -m
c ipvsadm -a -t 203.0.113.5:80 -r 198.18.0.2:80 -i -w 3
c ipvsadm -a -t 203.0.113.5:80 -r 198.18.0.3:80 -g -x 10 -y 5
c ipvsadm -a -t 203.0.113.7:80 -r 198.18.0.3:80 -i
c ipvsadm -Ln --tun-info
c ipvsadm -Ln --nosort
c ipvsadm -e -t 203.0.113.5:80 -r 198.18.0.4:80
c ipvsadm -e -t 203.0.113.5:80 -r 198.18.0.3:80 -w 4
c ipvsadm -Ln --thresholds
c ipvsadm -Sn
c ipvsadm -Lcn --persistent-conn
c ipvsadm -L -n --tun-info -t 203.0.113.7:80
