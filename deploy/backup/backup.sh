#!/bin/sh
# pg_dump of every Service365 database, one custom-format file each (restore with restore.sh).
#   docker compose --profile backup run --rm backup          # into ./backups (BACKUP_HOST_DIR)
#   PGHOST=... PGUSER=postgres PGPASSWORD=... BACKUP_DIR=/some/dir sh deploy/backup/backup.sh
# Connection from the libpq variables (PGHOST, PGPORT, PGUSER, PGPASSWORD). Databases:
# SERVICE365_DATABASES (default: all five). Files: <BACKUP_DIR>/<database>-<UTC time>.dump.
# Each dump is consistent on its own (one snapshot per database); services talk through
# events, so restoring them from different moments is caught up by the outbox and redelivery.
set -eu
databases="${SERVICE365_DATABASES:-intake dispatch scoring notify feed}"
dir="${BACKUP_DIR:-./backups}"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$dir"
for db in $databases; do
  file="$dir/$db-$stamp.dump"
  pg_dump --format=custom --compress=6 --no-owner --no-privileges --dbname="$db" --file="$file.part"
  mv "$file.part" "$file"
  echo "备份完成 / backed up: $db -> $file ($(wc -c < "$file") bytes)"
done
