#!/bin/sh
# Restore one pg_dump file (backup.sh) into an EMPTY database, then start the service on it.
#   sh deploy/backup/restore.sh backups/intake-20260101T020000Z.dump intake [owner]
# Creates the database if it does not exist (owner: the third argument, default the database's
# name, as postgres-init.sh makes them); refuses a database that already has tables. Objects are
# created as the owner role, so the service's own role owns them. Connection: PGHOST, PGPORT,
# PGUSER (a superuser, e.g. postgres), PGPASSWORD. In compose:
#   docker compose stop intake-web intake-worker
#   docker compose exec postgres dropdb -U postgres intake      # only to replace it
#   docker compose --profile backup run --rm --entrypoint sh backup \
#     /backup/restore.sh /backups/intake-....dump intake
#   docker compose up -d intake-migrate intake-web intake-worker  # migrate: no-op at the same head
set -eu
dump="${1:?usage: restore.sh DUMP_FILE DATABASE [OWNER]}"
db="${2:?usage: restore.sh DUMP_FILE DATABASE [OWNER]}"
owner="${3:-$db}"
test -r "$dump" || { echo "找不到备份文件 / no such dump: $dump" >&2; exit 2; }
# psql variables are interpolated only in what it reads, not in -c: the SQL comes on stdin.
exists="$(echo "SELECT 1 FROM pg_database WHERE datname = :'db';" | psql -X -tA -d postgres -v db="$db")"
if [ -z "$exists" ]; then
  echo 'CREATE DATABASE :"db" OWNER :"owner";' \
    | psql -X -q -v ON_ERROR_STOP=1 -d postgres -v db="$db" -v owner="$owner"
fi
tables="$(psql -X -tA -d "$db" -c "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")"
if [ "$tables" != "0" ]; then
  echo "数据库 $db 不是空的（$tables 张表），未恢复 / database $db is not empty ($tables tables): drop it first" >&2
  exit 3
fi
pg_restore --exit-on-error --single-transaction --no-owner --no-privileges \
  --role="$owner" --dbname="$db" "$dump"
echo "恢复完成 / restored: $dump -> $db (owner $owner)"
