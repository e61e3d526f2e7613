#!/bin/bash
# Runs once, when the PostgreSQL volume is new: one role and one database per service
# (DESIGN.md: no service reads another's tables). SERVICE365_DATABASES="intake dispatch ...".
set -euo pipefail
for name in ${SERVICE365_DATABASES:?set SERVICE365_DATABASES}; do
  echo "service365: creating role and database ${name}"
  psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER}" --dbname postgres \
    -v name="${name}" -v password="${SERVICE365_DB_PASSWORD:?set SERVICE365_DB_PASSWORD}" <<'SQL'
CREATE ROLE :"name" LOGIN PASSWORD :'password';
CREATE DATABASE :"name" OWNER :"name";
REVOKE ALL ON DATABASE :"name" FROM PUBLIC;
SQL
done
