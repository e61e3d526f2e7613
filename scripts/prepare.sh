#!/usr/bin/env bash
# Before `make run` / `make up`: keys, migrations and (outside production) the demo township.
# Wipes nothing: databases under var/ are kept; only metric files of dead processes are removed
# (by each process at start).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
mkdir -p var/run var/log
.venv/bin/python -m shared.cli keys
for svc in ${SERVICES:?set SERVICES, e.g. SERVICES=intake}; do
  echo "== $svc: migrate"
  scripts/service "$svc" migrate
  # Queues first, so that no service's events reach the exchange before its queue is bound.
  rc=0
  scripts/service "$svc" declare || rc=$?
  if [[ $rc == 3 ]]; then
    echo "== $svc: its queues conflict with what the broker holds (see the line above; README: changing queue settings)" >&2
    exit 3
  elif [[ $rc != 0 ]]; then
    echo "== $svc: broker not reachable now; its worker will declare"
  fi
  if [[ "${APP_ENV:-development}" != "production" ]] \
      && scripts/service "$svc" --help 2>/dev/null | grep -qw "seed-demo"; then
    echo "== $svc: seed-demo"
    scripts/service "$svc" seed-demo
  fi
done
# A service added after the accounts were made (scoring, on a var/ from before it) learns them
# only from account.upserted: outside production, intake announces every account again. A
# consumer that holds an account's revision already ignores it.
if [[ "${APP_ENV:-development}" != "production" && "${DEMO_DATA:-false}" == "true" ]] \
    && [[ " $SERVICES " == *" intake "* ]]; then
  echo "== intake: announce-accounts"
  scripts/service intake announce-accounts
fi
