#!/usr/bin/env bash
# `make up`: all services in the background (honcho, its own session), back when all are ready.
# pid: var/run/honcho.pid   logs: var/log/service365.log   stop: make down (scripts/down.sh)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
mkdir -p var/run var/log
pidfile=var/run/honcho.pid
logfile=var/log/service365.log
if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "已在运行 / already running (pid $(cat "$pidfile")); make down first" >&2
  exit 1
fi
echo "== $(date -Is) make up" >> "$logfile"
setsid nohup .venv/bin/honcho start --no-colour -f Procfile >> "$logfile" 2>&1 < /dev/null &
echo $! > "$pidfile"
echo "honcho pid $(cat "$pidfile"), logs $logfile"
exec .venv/bin/python scripts/wait_ready.py --timeout "${READY_TIMEOUT:-120}" \
  --log "$logfile" --pidfile "$pidfile" ${SERVICES:?set SERVICES}
