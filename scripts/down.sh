#!/usr/bin/env bash
# `make down`: stop what `make up` started (honcho stops its processes, gunicorn drains).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
pidfile=var/run/honcho.pid
if [[ ! -f "$pidfile" ]]; then
  echo "未在运行 / not running (no $pidfile)"
  exit 0
fi
pid="$(cat "$pidfile")"
if kill -0 "$pid" 2>/dev/null; then
  kill -TERM "$pid"
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "honcho did not stop in 30s; killing its session" >&2
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
fi
rm -f "$pidfile"
echo "已停止 / stopped"
