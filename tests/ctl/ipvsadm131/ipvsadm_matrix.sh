#!/bin/bash
# ipvsadm 1.31: every command with every option, one at a time: its message and exit code.
modprobe ip_vs 2>/dev/null
declare -A BASE=(
 [-A]="-A -t 203.0.113.9:80" [-E]="-E -t 203.0.113.5:80" [-D]="-D -t 203.0.113.5:80" [-C]="-C"
 [-L]="-L" [-a]="-a -t 203.0.113.5:80 -r 198.18.0.9:80" [-e]="-e -t 203.0.113.5:80 -r 198.18.0.2:80"
 [-d]="-d -t 203.0.113.5:80 -r 198.18.0.2:80" [--set]="--set 900 120 300" [-Z]="-Z" [-S]="-S"
 [-R]="-R" [--start-daemon]="--start-daemon master" [--stop-daemon]="--stop-daemon master" [-h]="-h")
OPTS=("-n" "-c" "-t 203.0.113.5:80" "-u 203.0.113.5:53" "-f 7" "-s rr" "-p 10" "-p" "-M 255.255.255.255" "-r 198.18.0.3:80" "-g" "-m" "-i" "-w 1" "-x 1" "-y 1" "--mcast-interface lo" "--timeout" "--daemon" "--stats" "--rate" "--thresholds" "--persistent-conn" "--nosort" "--sort" "--syncid 1" "--exact" "-o" "--pe sip" "-b sh-port" "--tun-type ipip" "--tun-port 1" "--tun-nocsum" "--tun-csum" "--tun-remcsum" "--tun-info" "-6" "--sync-maxlen 1000" "--mcast-group 224.0.0.82" "--mcast-port 8849" "--mcast-ttl 2")
reset() { ipvsadm -C; ipvsadm --stop-daemon master 2>/dev/null; ipvsadm --stop-daemon backup 2>/dev/null; ipvsadm -A -t 203.0.113.5:80 -s rr; ipvsadm -a -t 203.0.113.5:80 -r 198.18.0.2:80 -m; }
for cmd in -A -E -D -C -L -a -e -d --set -Z -S -R --start-daemon --stop-daemon; do
  reset
  out=$(ipvsadm ${BASE[$cmd]} 2>&1 < /dev/null); rc=$?
  printf '%s\t%s\t%s\t%s\n' "$cmd" "(base)" "$rc" "$(echo "$out" | head -1)"
  for opt in "${OPTS[@]}"; do
    [ "${rc:-0}" = 0 ] && reset
    out=$(ipvsadm ${BASE[$cmd]} $opt 2>&1 < /dev/null); rc=$?
    first=$(echo "$out" | head -1)
    printf '%s\t%s\t%s\t%s\n' "$cmd" "$opt" "$rc" "$first"
  done
done
