#!/bin/bash
# The entrypoint of the postgres:15 stand-in (tests/compose/base-images.sh), doing what the
# official image's does for `postgres`: on an empty $PGDATA, initdb with POSTGRES_USER as the
# superuser and POSTGRES_PASSWORD as its password (scram-sha-256 over the network), create
# POSTGRES_DB, listen on every address; then run the server in the foreground as `postgres`.
# Any other command runs as given.
set -euo pipefail

if [ "${1:-postgres}" != postgres ]; then
    exec "$@"
fi
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
data=${PGDATA:-/var/lib/postgresql/data}
if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "postgres: POSTGRES_PASSWORD must be set (as the official image requires)" >&2
    exit 1
fi
mkdir -p "$data" /run/postgresql
chown -R postgres:postgres "$data" /run/postgresql
chmod 700 "$data"
if [ ! -s "$data/PG_VERSION" ]; then
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    chown postgres "$pwfile"
    runuser -u postgres -- initdb -D "$data" -U "$user" --pwfile="$pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 > /dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$data/pg_hba.conf"
    echo "listen_addresses = '*'" >> "$data/postgresql.conf"
    if [ "$db" != postgres ]; then
        # A private server on the socket only, to create the database before anyone connects.
        runuser -u postgres -- pg_ctl -D "$data" -o "-c listen_addresses=''" -w start > /dev/null
        runuser -u postgres -- psql -q -U "$user" -d postgres -c "CREATE DATABASE \"$db\"" > /dev/null
        runuser -u postgres -- pg_ctl -D "$data" -m fast -w stop > /dev/null
    fi
fi
# setpriv executes the server in place: it is PID 1 and gets the stop signal itself.
exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$data"
