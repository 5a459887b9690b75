#!/usr/bin/env bash
# Several gateways as one, measured (docs/scaling.md): three gateways on one Redis behind
# haproxy (round-robin), the mock WeChat with auto-consent; LOGINS whole logins by curl, then
# REQUESTS logged-in requests spread over those sessions. Reports Redis commands per login and
# per request (from INFO commandstats: counts, which do not depend on how busy the machine
# is) and Redis memory per session. Usage: bench/scaling.sh [path/to/wxgate]
set -euo pipefail
BIN=${1:-target/release/wxgate}
[ -x "$BIN" ] || BIN=target/debug/wxgate
LOGINS=${LOGINS:-300}
REQUESTS=${REQUESTS:-3000}
UA='Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 Mobile Safari/537.36 MicroMessenger/8.0.49.2600(0x28003133) NetType/WIFI'
DIR=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$DIR"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

REDIS=$(port); MOCK=$(port); FRONT=$(port)
redis-server --port "$REDIS" --bind 127.0.0.1 --save '' --appendonly no --dir "$DIR" >/dev/null & PIDS+=($!)
"$BIN" mock-wechat --listen "127.0.0.1:$MOCK" --auto-consent >/dev/null 2>&1 & PIDS+=($!)
wait_port "$REDIS"; wait_port "$MOCK"
GWS=()
for i in 1 2 3; do
  GW=$(port); ADMIN=$(port); GWS+=("$GW")
  cat > "$DIR/gw$i.toml" <<TOML
[server]
listen = "127.0.0.1:$GW"
public_url = "http://127.0.0.1:$FRONT"
[admin]
listen = "127.0.0.1:$ADMIN"
[wechat]
appid = "wx2ebfe5f20389c64a"
api_base = "http://127.0.0.1:$MOCK"
authorize_url = "http://127.0.0.1:$MOCK/connect/oauth2/authorize"
[session]
store = "redis"
cookie_secure = false
[identity]
algorithm = "HS256"
[log]
access_log = false
[[routes]]
path = "/"
upstream = "http://127.0.0.1:$MOCK"
scope = "snsapi_userinfo"
TOML
  WXGATE_WECHAT__SECRET=5b2c8e1f7a9d4c3e0f6a19d27c4b8e03 \
  WXGATE_SESSION__SECRET=scaling-bench-session-secret-0123456789abcdef \
  WXGATE_IDENTITY__SECRET=scaling-bench-identity-secret-0123456789abcdef \
  WXGATE_SESSION__REDIS_URL="redis://127.0.0.1:$REDIS/0" \
    "$BIN" run --config "$DIR/gw$i.toml" >/dev/null 2>&1 & PIDS+=($!)
done
{
  printf 'defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  option httpclose\n'
  printf 'frontend f\n  bind 127.0.0.1:%s\n  default_backend g\nbackend g\n  balance roundrobin\n' "$FRONT"
  for g in "${GWS[@]}"; do printf '  server s%s 127.0.0.1:%s\n' "$g" "$g"; done
} > "$DIR/haproxy.cfg"
haproxy -db -f "$DIR/haproxy.cfg" >/dev/null 2>&1 & PIDS+=($!)
for g in "${GWS[@]}" "$FRONT"; do wait_port "$g"; done

stats() { redis-cli -p "$REDIS" info commandstats | tr -d '\r' | awk -F'[:,=]' '/^cmdstat_/{sub("cmdstat_","",$1); print $1, $3}'; }
total() { stats | awk '{s+=$2} END {print s+0}'; }
used() { redis-cli -p "$REDIS" info memory | tr -d '\r' | awk -F: '/^used_memory:/{print $2}'; }

before_mem=$(used); redis-cli -p "$REDIS" config resetstat >/dev/null
start=$(date +%s.%N)
for i in $(seq "$LOGINS"); do
  jar="$DIR/jar$i"
  # A WeChat page load without a session gets the hash hop page; its <noscript> refresh
  # names the authorize URL (what a browser without JavaScript follows).
  a=$(curl -s -c "$jar" -b "$jar" -A "$UA" "http://127.0.0.1:$FRONT/p/$i" |
    sed -n 's/.*http-equiv="refresh" content="0;url=\([^"]*\)".*/\1/p' | head -1 | sed 's/&amp;/\&/g')
  c=$(curl -s -o /dev/null -A "$UA" -w '%{redirect_url}' "$a")
  s=$(curl -s -o /dev/null -c "$jar" -b "$jar" -A "$UA" -w '%{http_code}' "$c")
  [ "$s" = 302 ] || { echo "login $i: callback answered $s" >&2; exit 1; }
done
login_secs=$(echo "$(date +%s.%N) - $start" | bc)
login_ops=$(total)
echo "== $LOGINS logins through haproxy over 3 gateways ($login_secs s on this busy machine)"
stats | awk -v n="$LOGINS" '{printf "  %-10s %6d  %.2f per login\n", $1, $2, $2/n}'
echo "  total      $login_ops  $(echo "scale=2; $login_ops / $LOGINS" | bc) per login"
after_mem=$(used)
sessions=$(redis-cli -p "$REDIS" --scan --pattern 'wxgate:s:*' | wc -l || true)
claims=$(redis-cli -p "$REDIS" --scan --pattern 'wxgate:v:f:*' | wc -l)
echo "== memory: $sessions sessions, $claims login claims; used_memory +$((after_mem - before_mem)) bytes = $(( (after_mem - before_mem) / LOGINS )) per login"
one_s=$(redis-cli -p "$REDIS" --scan --pattern 'wxgate:s:*' | head -1 || true)
one_u=$(redis-cli -p "$REDIS" --scan --pattern 'wxgate:u:*' | head -1 || true)
one_f=$(redis-cli -p "$REDIS" --scan --pattern 'wxgate:v:f:*' | head -1 || true)
echo "  MEMORY USAGE: record $(redis-cli -p "$REDIS" memory usage "$one_s"), user set $(redis-cli -p "$REDIS" memory usage "$one_u"), login claim $(redis-cli -p "$REDIS" memory usage "$one_f") bytes"

redis-cli -p "$REDIS" config resetstat >/dev/null
start=$(date +%s.%N)
# One curl per session's cookie jar would be slow; requests go in batches per session.
per=$(( REQUESTS / LOGINS ))
for n in $(seq "$LOGINS"); do
  args=()
  for _ in $(seq "$per"); do args+=(-o /dev/null "http://127.0.0.1:$FRONT/p/$n"); done
  curl -s -b "$DIR/jar$n" -A "$UA" "${args[@]}"
done
req_secs=$(echo "$(date +%s.%N) - $start" | bc)
req_ops=$(total)
sent=$(( per * LOGINS ))
echo "== $sent logged-in requests ($per per session, round-robin over 3 gateways; $req_secs s)"
stats | awk -v n="$sent" '{printf "  %-10s %6d  %.3f per request\n", $1, $2, $2/n}'
echo "  total      $req_ops  $(echo "scale=3; $req_ops / $sent" | bc) per request"
