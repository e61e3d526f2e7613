#!/usr/bin/env bash
# The demo township (deploy/demo/township.yaml: 26 villages, 40 grid leaders, 167 grid workers,
# area leaders, supervisors, county departments), loaded over HTTP once intake and dispatch
# answer. Run by honcho beside the services under `make run` / `make up`; idempotent.
# Honcho stops every process when one exits, so after loading this one stays asleep.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if [[ "${DEMO_DATA:-false}" == "true" && "${APP_ENV:-development}" != "production" ]]; then
  export DEMO_PASSWORD="${DEMO_PASSWORD:-demo365}"
  if "$root/.venv/bin/python" deploy/demo/load_township.py --wait 180 \
      --password "$DEMO_PASSWORD" --admin-password "$DEMO_PASSWORD"; then
    echo "演示乡镇已载入 / demo township loaded"
  else
    echo "演示乡镇载入失败，见上文 / demo township NOT loaded (see above); the services keep running"
  fi
else
  echo "DEMO_DATA is not true: no demo township"
fi
exec sleep infinity
