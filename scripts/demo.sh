#!/usr/bin/env bash
# mas4h demo on this host: a master and a slave on 127.0.0.1 (embedded SQLite
# registry), and a "device" (this host too) whose client script (the one
# `mas4h client-script` renders for busybox/OpenWrt devices) asks the master
# for a signed slot and keeps its real `ssh -R` tunnel up on the slave it was
# given, carrying the device's web page and its sshd port.
#   scripts/demo.sh start   (what `make demo` runs)
#   scripts/demo.sh stop    (what `make demo-stop` runs)
# Everything lives in $MAS4H_DEMO_DIR (default /var/lib/mas4h/demo); only
# processes recorded in its pid files are ever stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
B="${MAS4H_DEMO_BIN:-$PWD/bin/mas4h}"
D="${MAS4H_DEMO_DIR:-/var/lib/mas4h/demo}"
SSH_PORT="${MAS4H_DEMO_SSH_PORT:-2222}"
MASTER_PORT="${MAS4H_DEMO_MASTER_PORT:-8080}"
MASTER="http://127.0.0.1:$MASTER_PORT"
WEB_PORT="${MAS4H_DEMO_WEB_PORT:-18080}"
USER_T="${MAS4H_DEMO_TUNNEL_USER:-mas4h-tunnel}"
# The slave guards its leased ports on this host's loopback (iptables, by
# uid; removed at demo-stop); "none" leaves the host's firewall alone.
GUARD_PORTS="${MAS4H_DEMO_GUARD_PORTS:-20000-29999}"

stop_pidfile() { # stop the process whose pid is in $1, if it is still there
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill "$pid" 2>/dev/null || true; fi
  rm -f "$f"
}

stop() {
  stop_pidfile "$D/device-client.pid"   # the client script ends its ssh on TERM
  stop_pidfile "$D/device-ssh.pid"      # left by older demos
  stop_pidfile "$D/device-web.pid"
  stop_pidfile "$D/slave.pid"
  stop_pidfile "$D/master.pid"
  sleep 0.5
  stop_pidfile "$D/slave/sshd/sshd.pid"   # the slave leaves sshd running by design
  echo "demo stopped (state kept in $D; rm -rf it to start afresh)"
}

wait_port() { # wait_port PORT SECONDS
  for _ in $(seq $(( $2 * 10 ))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

start() {
  [ "$(id -u)" = 0 ] || { echo "the demo runs a slave, which needs root: sudo make demo" >&2; exit 1; }
  [ -x "$B" ] || { echo "build first: make build" >&2; exit 1; }
  stop >/dev/null 2>&1 || true
  mkdir -p "$D/device/www"
  chmod 755 "$(dirname "$D")" "$D"

  echo "== 1. the device's key and its services (a web page on 127.0.0.1:$WEB_PORT)"
  [ -f "$D/device/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C demo-pi -f "$D/device/id_ed25519"
  echo "hello from demo-pi, through a mas4h reverse tunnel" > "$D/device/www/index.html"
  setsid busybox httpd -f -p "127.0.0.1:$WEB_PORT" -h "$D/device/www" </dev/null >/dev/null 2>&1 & echo $! > "$D/device-web.pid"

  echo "== 2. start the master on $MASTER (registry $D/registry.db, log $D/master.log)"
  setsid nohup "$B" master --listen "127.0.0.1:$MASTER_PORT" --db "$D/registry.db" \
    --admin-token-file "$D/admin.token" </dev/null > "$D/master.log" 2>&1 &
  echo $! > "$D/master.pid"
  if ! wait_port "$MASTER_PORT" 10; then echo "master did not come up:"; cat "$D/master.log"; exit 1; fi
  export MAS4H_MASTER="$MASTER" MAS4H_TOKEN_FILE="$D/admin.token"

  echo "== 3. issue the slave its own credential, and start it on 127.0.0.1:$SSH_PORT under the master (log $D/slave.log)"
  "$B" slave add demo-s1 --token-file-out "$D/slave-demo-s1.token"
  setsid nohup "$B" slave --name demo-s1 --master "$MASTER" --token-file "$D/slave-demo-s1.token" \
    --state-dir "$D/slave" --ssh-listen "127.0.0.1:$SSH_PORT" --public-host 127.0.0.1 \
    --tunnel-user "$USER_T" --guard-ports "$GUARD_PORTS" </dev/null > "$D/slave.log" 2>&1 &
  echo $! > "$D/slave.pid"
  if ! wait_port "$SSH_PORT" 10; then echo "slave did not come up:"; cat "$D/slave.log"; exit 1; fi
  grep -E 'host key|started sshd|adopted' "$D/slave.log" | sed 's/^/   /'

  echo "== 4. enrol the device through the master"
  # The slave probes each forward and reaps sessions that fail: the web page
  # answers HTTP; the device's own sshd is probed only if this host runs one.
  ssh_fwd=ssh=localhost:22
  (exec 3<>/dev/tcp/127.0.0.1/22) 2>/dev/null || ssh_fwd="ssh=localhost:22,probe=none"
  if ! "$B" device show demo-pi >/dev/null 2>&1; then
    "$B" device add demo-pi --key "$D/device/id_ed25519.pub" --forward "$ssh_fwd" --forward "web=127.0.0.1:$WEB_PORT,probe=http"
  fi

  echo "== 5. the device's client: a POSIX sh script rendered by the master's CLI (ssh, ssh-keygen, curl)"
  # It signs each slot request with the device key (ssh-keygen -Y sign),
  # pins the slave's host key, and keeps the stock OpenSSH client's -R
  # tunnel up. The demo master is plain http on loopback: --insecure-http.
  "$B" client-script --master "$MASTER" --insecure-http --device demo-pi > "$D/device/mas4h-client.sh"

  echo "== 6. the device asks the master for a slot and opens its tunnel there (log $D/device-client.log)"
  MAS4H_KEY="$D/device/id_ed25519" MAS4H_STATE="$D/device/state" MAS4H_SSH_CLIENT=openssh \
    setsid nohup sh "$D/device/mas4h-client.sh" run </dev/null > "$D/device-client.log" 2>&1 &
  echo $! > "$D/device-client.pid"
  web_port=$("$B" device show demo-pi -o json | sed -n '/"name": "web"/,/remote_port/s/.*"remote_port": \([0-9]*\).*/\1/p')
  ssh_port=$("$B" device show demo-pi -o json | sed -n '/"name": "ssh"/,/remote_port/s/.*"remote_port": \([0-9]*\).*/\1/p')
  if ! wait_port "$web_port" 20; then echo "tunnel did not come up:"; cat "$D/device-client.log"; exit 1; fi
  sed 's/^/   /' "$D/device-client.log"
  sleep 11  # a probe cycle and a heartbeat, so that the master lists the tunnel and its probe

  echo "== 7. status"
  "$B" status
  echo
  "$B" tunnels
  echo
  echo "   through the tunnel, slave port $web_port -> device web page:"
  echo -n "   "; busybox wget -q -O - "http://127.0.0.1:$web_port/"
  cat <<MSG

The demo device is connected. From this host (the slave):
   curl http://127.0.0.1:$web_port/          the device's web page
   ssh -p $ssh_port root@127.0.0.1           the device's own sshd (if it runs one)
   export MAS4H_MASTER=$MASTER MAS4H_TOKEN_FILE=$D/admin.token
   $B status | tunnels | device list
   $B device revoke demo-pi                    cuts it off within one heartbeat
   make demo-stop                               stops the demo
MSG
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
