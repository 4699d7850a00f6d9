#!/usr/bin/env bash
# mas4h demo on this host: a standalone slave on 127.0.0.1 with a local
# registry, and a "device" (this host too) whose real `ssh -R` tunnel comes up
# through it, carrying the device's web page and its sshd port.
#   scripts/demo.sh start   (what `make demo` runs)
#   scripts/demo.sh stop    (what `make demo-stop` runs)
# Everything lives in $MAS4H_DEMO_DIR (default /var/lib/mas4h/demo); only
# processes recorded in its pid files are ever stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
B="$PWD/bin/mas4h"
D="${MAS4H_DEMO_DIR:-/var/lib/mas4h/demo}"
SSH_PORT="${MAS4H_DEMO_SSH_PORT:-2222}"
WEB_PORT="${MAS4H_DEMO_WEB_PORT:-18080}"
USER_T=mas4h-tunnel

stop_pidfile() { # stop the process whose pid is in $1, if it is still there
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill "$pid" 2>/dev/null || true; fi
  rm -f "$f"
}

stop() {
  stop_pidfile "$D/device-ssh.pid"
  stop_pidfile "$D/device-web.pid"
  stop_pidfile "$D/slave.pid"
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

  echo "== 2. enrol it in the registry ($D/registry.db)"
  if ! "$B" device show demo-pi --db "$D/registry.db" >/dev/null 2>&1; then
    "$B" device add demo-pi --key "$D/device/id_ed25519.pub" --db "$D/registry.db" \
      --forward ssh=localhost:22 --forward "web=127.0.0.1:$WEB_PORT"
  fi
  ssh_port=$("$B" device show demo-pi --db "$D/registry.db" -o json | sed -n '/"name": "ssh"/,/remote_port/s/.*"remote_port": \([0-9]*\).*/\1/p')
  web_port=$("$B" device show demo-pi --db "$D/registry.db" -o json | sed -n '/"name": "web"/,/remote_port/s/.*"remote_port": \([0-9]*\).*/\1/p')

  echo "== 3. start the slave on 127.0.0.1:$SSH_PORT (log: $D/slave.log)"
  setsid nohup "$B" slave --name demo --db "$D/registry.db" --state-dir "$D/slave" \
    --ssh-listen "127.0.0.1:$SSH_PORT" --tunnel-user "$USER_T" </dev/null > "$D/slave.log" 2>&1 &
  echo $! > "$D/slave.pid"
  if ! wait_port "$SSH_PORT" 10; then echo "slave did not come up:"; cat "$D/slave.log"; exit 1; fi
  grep -E 'host key|started sshd|adopted' "$D/slave.log" | sed 's/^/   /'

  echo "== 4. the device opens its tunnel with the stock OpenSSH client, pinning the slave's host key"
  echo "[127.0.0.1]:$SSH_PORT $(cut -d' ' -f1,2 "$D/slave/sshd/ssh_host_ed25519_key.pub")" > "$D/device/known_hosts"
  setsid nohup ssh -F /dev/null -N -i "$D/device/id_ed25519" -o IdentitiesOnly=yes -o BatchMode=yes \
    -o ExitOnForwardFailure=yes -o ServerAliveInterval=10 -o ServerAliveCountMax=3 \
    -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$D/device/known_hosts" \
    -R "$ssh_port:localhost:22" -R "$web_port:127.0.0.1:$WEB_PORT" \
    -p "$SSH_PORT" "$USER_T@127.0.0.1" </dev/null > "$D/device-ssh.log" 2>&1 &
  echo $! > "$D/device-ssh.pid"
  if ! wait_port "$web_port" 10; then echo "tunnel did not come up:"; cat "$D/device-ssh.log"; exit 1; fi

  echo "== 5. status"
  "$B" device list --db "$D/registry.db"
  echo
  echo "   through the tunnel, slave port $web_port -> device web page:"
  echo -n "   "; busybox wget -q -O - "http://127.0.0.1:$web_port/"
  cat <<MSG

The demo device is connected. From this host (the slave):
   curl http://127.0.0.1:$web_port/          the device's web page
   ssh -p $ssh_port root@127.0.0.1           the device's own sshd (if it runs one)
   $B device revoke demo-pi --db $D/registry.db   cuts it off within 2 s
   make demo-stop                               stops the demo
MSG
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
