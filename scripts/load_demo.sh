#!/usr/bin/env bash
# The demo township (deploy/demo/township.yaml: 26 villages, 40 grid leaders, 167 grid workers,
# area leaders, supervisors, county departments), loaded over HTTP once intake and dispatch
# answer; then a few dozen resolved and rated demo reports (deploy/demo/load_resolved.py), so
# that scoring's leaderboard has points; then three past months of resolved demo reports
# (`intake seed-history`, `dispatch seed-history`), so that earlier months have points too. Run by honcho beside the services under `make run` /
# `make up`; idempotent. Then notify's demo preferences. Honcho stops every process when one exits, so after loading this one stays asleep.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if [[ "${DEMO_DATA:-false}" == "true" && "${APP_ENV:-development}" != "production" ]]; then
  export DEMO_PASSWORD="${DEMO_PASSWORD:-demo365}"
  if "$root/.venv/bin/python" deploy/demo/load_township.py --wait 180 \
      --password "$DEMO_PASSWORD" --admin-password "$DEMO_PASSWORD"; then
    echo "演示乡镇已载入 / demo township loaded"
    # Resolved and rated demo reports, through the real APIs: scoring's board gets its points
    # from dispatch's events (needs WECHAT_MODE=dev, which make run / make up set).
    if "$root/.venv/bin/python" deploy/demo/load_resolved.py --password "$DEMO_PASSWORD" \
        --admin-password "$DEMO_PASSWORD"; then
      echo "演示办结事项已载入 / resolved demo reports loaded"
    else
      echo "演示办结事项载入失败，见上文 / resolved demo reports NOT loaded (see above)"
    fi
    # A few past months of resolved demo reports, dated through the services' own code (intake
    # files them with past reported_at, dispatch resolves them with past times): the board has
    # history. Both commands are dev only and idempotent.
    if "$root/scripts/service" intake seed-history && "$root/scripts/service" dispatch seed-history; then
      echo "演示历史诉求已载入 / past months of demo reports loaded"
    else
      echo "演示历史诉求载入失败，见上文 / past demo reports NOT loaded (see above)"
    fi
    # notify: the demo residents follow the township's news, grid leaders keep quiet hours
    # (nobody's own choice is overwritten).
    if [[ " ${SERVICES:-} " == *" notify "* ]]; then
      "$root/scripts/service" notify demo-preferences --wait 120 \
        || echo "演示提醒设置载入失败，见上文 / demo preferences NOT loaded (see above)"
    fi
  else
    echo "演示乡镇载入失败，见上文 / demo township NOT loaded (see above); the services keep running"
  fi
else
  echo "DEMO_DATA is not true: no demo township"
fi
exec sleep infinity
