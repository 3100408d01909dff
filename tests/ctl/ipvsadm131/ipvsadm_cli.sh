#!/bin/bash
# ipvsadm 1.31's command line and output, captured for director-ipvsadm's tests.
. /share/lib.sh
mkdir -p /share/out
modprobe ip_vs 2>/dev/null; modprobe ip_vs_rr ip_vs_wrr ip_vs_wlc ip_vs_sh 2>/dev/null
ls -la /etc/services 2>&1
cp /usr/share/man/man8/ipvsadm.8.gz /share/out/ 2>/dev/null; cp /usr/share/man/man8/ipvsadm-save.8.gz /usr/share/man/man8/ipvsadm-restore.8.gz /share/out/ 2>/dev/null
ls /usr/share/man/man8/ 2>&1 | head
c() { # run a command, print it, its stdout/stderr and exit code
  echo "### $*"
  "$@" > /tmp/o 2> /tmp/e; rc=$?
  echo "--- stdout"; cat /tmp/o; echo "--- stderr"; cat /tmp/e; echo "--- rc $rc"
}
c ipvsadm --version
c ipvsadm -h
c ipvsadm
c ipvsadm -L
c ipvsadm -Ln
# Example 1 of the manual page, SPEC addresses
c ipvsadm -A -t 203.0.113.5:80 -s rr
c ipvsadm -a -t 203.0.113.5:80 -r 198.18.0.2:80 -m
c ipvsadm -a -t 203.0.113.5:80 -r 198.18.0.3:80 -m
c ipvsadm -a -t 203.0.113.5:80 -r 198.18.0.4:80 -m -w 2
c ipvsadm -A -u 203.0.113.5:53 -s wlc
c ipvsadm -a -u 203.0.113.5:53 -r 198.18.0.2 -g
c ipvsadm -A -t 203.0.113.5:443 -s sh -p 600 -M 255.255.255.0
c ipvsadm -a -t 203.0.113.5:443 -r 198.18.0.2 -i -x 100 -y 50
# Example 2: fwmark
c ipvsadm -A -f 1 -s rr
c ipvsadm -a -f 1 -r 198.18.0.2:0 -m
c ipvsadm -a -f 1 -r 198.18.0.3:0 -m
# IPv6
c ipvsadm -A -t [2001:db8:1::100]:80 -s rr
c ipvsadm -a -t [2001:db8:1::100]:80 -r [2001:db8:2::2]:80 -m
c ipvsadm -a -t [2001:db8:1::100]:80 -r [2001:db8:2::3]:8080 -g -w 3
c ipvsadm -A -u [2001:db8:1::100]:53 -s wrr -p 360 -M 64
c ipvsadm -a -u [2001:db8:1::100]:53 -r [2001:db8:2::2] -i
c ipvsadm -A -f 2 -6 -s wlc
c ipvsadm -a -f 2 -6 -r [2001:db8:2::2]:0 -m
c ipvsadm -A -f 3 -6 -s rr -p -M 48
for opt in -L -Ln "-L -n" "-Ln --stats" "-Ln --rate" "-Ln --exact --stats" "-Ln --thresholds" "-Ln --persistent-conn" "-Ln --sort" "-L -n -t 203.0.113.5:80" "-L -n -t [2001:db8:1::100]:80" "-L -n -f 2" "-L -n -f 2 -6" "-Lc" "-Lcn" "-lcn" "-ln" "-L --timeout" "-L --daemon" "-S" "-S -n" "-Sn" "-L -n -u 203.0.113.5:53 --stats"; do c ipvsadm $opt; done
c ipvsadm-save
c ipvsadm-save -n
ipvsadm-save -n > /tmp/saved
# edits
c ipvsadm -E -t 203.0.113.5:80 -s wrr
c ipvsadm -e -t 203.0.113.5:80 -r 198.18.0.3:80 -m -w 5
c ipvsadm -d -t 203.0.113.5:80 -r 198.18.0.4:80
c ipvsadm -D -u 203.0.113.5:53
c ipvsadm --set 100 20 30
c ipvsadm -L --timeout
c ipvsadm -Z
c ipvsadm -Z -t 203.0.113.5:80
c ipvsadm -Ln
# errors
c ipvsadm -A -t 203.0.113.5:80 -s rr
c ipvsadm -a -t 203.0.113.5:80 -r 198.18.0.3:80 -m
c ipvsadm -d -t 203.0.113.5:80 -r 198.18.0.9:80
c ipvsadm -D -t 203.0.113.9:80
c ipvsadm -E -t 203.0.113.9:80 -s rr
c ipvsadm -A -t 203.0.113.5:99999
c ipvsadm -A -t 203.0.113.5
c ipvsadm -A -t nosuchhost.invalid:80
c ipvsadm -A -t 203.0.113.5:80x
c ipvsadm -A -t 203.0.113.6:80 -s nosuch
c ipvsadm -a -t 203.0.113.5:80 -r 198.18.0.7 -w -1
c ipvsadm -a -t 203.0.113.5:80 -r 198.18.0.7 -w 70000
c ipvsadm -a -t 203.0.113.5:80 -r 198.18.0.7 -w abc
c ipvsadm -A -t 203.0.113.6:80 -p abc
c ipvsadm -A -t 203.0.113.6:80 -M 255.255.0.255
c ipvsadm -A -t 203.0.113.6:80 -M 64
c ipvsadm -A -t [2001:db8:1::101]:80 -M 129 -p
c ipvsadm -A -t [2001:db8:1::101]:80 -M 255.255.255.0 -p
c ipvsadm -A -f 0
c ipvsadm -A -f abc
c ipvsadm -a -t [2001:db8:1::100]:80 -r 198.18.0.2:80 -m
c ipvsadm -a -t [2001:db8:1::100]:80 -r 198.18.0.2:80 -i
c ipvsadm -a -t 203.0.113.5:80 -r [2001:db8:2::5]:80 -i
c ipvsadm -a -t 203.0.113.5:80 -r [2001:db8:2::5]:80 -g
c ipvsadm -L -n -t 203.0.113.9:80
c ipvsadm --bogus
c ipvsadm -X
c ipvsadm -A
c ipvsadm -a
c ipvsadm -A -t 203.0.113.6:80 -u 203.0.113.6:80
c ipvsadm -A -L
c ipvsadm -L -t
c ipvsadm -Ln extra
c ipvsadm --set 1 2
c ipvsadm --set a b c
c ipvsadm -A -t 203.0.113.6:80 -s rr -b sh-port
c ipvsadm -A -t 203.0.113.7:80 -s sh -b sh-port,sh-fallback
c ipvsadm -A -t 203.0.113.8:80 -s mh -b mh-port
c ipvsadm -A -t 203.0.113.8:81 -s rr -o
c ipvsadm -A -u 203.0.113.8:82 -s rr -o
c ipvsadm -a -t 203.0.113.7:80 -r 198.18.0.2 --tun-type gue --tun-port 6080
c ipvsadm -a -t 203.0.113.7:80 -r 198.18.0.3 -i --tun-type gue --tun-port 6080 --tun-nocsum
c ipvsadm -a -t 203.0.113.7:80 -r 198.18.0.4 -i --tun-type gre --tun-csum
c ipvsadm -Ln
c ipvsadm -Sn
c ipvsadm -C
c ipvsadm -Ln
echo "-A -t 203.0.113.5:80 -s rr" > /tmp/r1; echo "-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m -w 1" >> /tmp/r1; echo "bogus line" >> /tmp/r1
echo "### ipvsadm -R < r1 (with a bad line)"; ipvsadm -R < /tmp/r1; echo "rc $?"; ipvsadm -Ln
ipvsadm -C
echo "### ipvsadm-restore < saved"; ipvsadm-restore < /tmp/saved; echo "rc $?"; ipvsadm -Sn
echo "### ipvsadm -R < saved (again)"; ipvsadm -R < /tmp/saved; echo "rc $?"
