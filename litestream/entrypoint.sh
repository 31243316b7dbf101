#!/bin/sh
# Runs Litestream (`restore` in the init container, `replicate` in the sidecar) only when the
# variables litestream.yml expands are usable. Litestream turns an unset ${VAR} into "", so
# without this check a pod with no ordinal, cluster or namespace would replicate into a path
# shared with other pods ("gateway-", "//gateway-0") and corrupt their backups. POSIX sh: the
# official Litestream image is Alpine (busybox dd, od, tr, date, mv).
#
# `restore -if-db-not-exists` skips the restore whenever the database FILE exists, even when it
# is empty or not a database (a crash while the volume was being set up, a stray `touch`): the
# pod would then start with no data while its replica holds everything. So before such a
# restore, a file without SQLite's 16-byte header is moved aside (<db>.invalid-<UTC time>, with
# its -wal, -shm and Litestream's state directory) and the restore runs as on an empty volume.
#
#   entrypoint.sh restore -if-db-not-exists -if-replica-exists -config /etc/litestream/litestream.yml /data/bot.db
#   entrypoint.sh replicate -config /etc/litestream/litestream.yml
#
# On a bad value: one line on stderr naming the variable, exit 64 (EX_USAGE, like the app).
set -eu

refuse() {
    echo "litestream-entrypoint: $1; refusing to start" >&2
    exit 64
}

# A path segment of the replica path: a DNS label, so it can hold no '/' and no '..'.
require_label() {
    value=$(eval "printf '%s' \"\${$1-}\"")
    case "$value" in
        '') refuse "$1 is unset or empty (the replica path \$CLUSTER_NAME/\$POD_NAMESPACE/gateway-\$POD_ORDINAL needs it, or clusters sharing the bucket would share paths)" ;;
        *[!a-z0-9-]* | -* | *-) refuse "$1 must be lower-case letters, digits and '-', got '$value'" ;;
    esac
}

case "${POD_ORDINAL-}" in
    '') refuse "POD_ORDINAL is unset or empty (the replica path gateway-\$POD_ORDINAL would be shared)" ;;
    *[!0-9]*) refuse "POD_ORDINAL must be a non-negative integer, got '${POD_ORDINAL}'" ;;
esac
require_label CLUSTER_NAME
require_label POD_NAMESPACE
[ -n "${LITESTREAM_BUCKET-}" ] || refuse "LITESTREAM_BUCKET is unset or empty"
[ -n "${LITESTREAM_S3_ENDPOINT-}" ] || refuse "LITESTREAM_S3_ENDPOINT is unset or empty"
[ -n "${DATABASE_PATH-}" ] || refuse "DATABASE_PATH is unset or empty"

# "SQLite format 3" and a NUL: the first 16 bytes of every SQLite database, as od prints them.
SQLITE_HEADER=53514c69746520666f726d6174203300

has_sqlite_header() {
    [ "$(dd if="$1" bs=16 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')" = "$SQLITE_HEADER" ]
}

# Moves a database file without a SQLite header (and what belongs to it) out of the way, so
# `restore -if-db-not-exists` restores the replica instead of keeping an empty pod.
set_aside_if_not_a_database() {
    db=$1
    [ -f "$db" ] || return 0
    if [ ! -r "$db" ]; then
        echo "litestream-entrypoint: $db is not readable; refusing to restore over it" >&2
        exit 1
    fi
    has_sqlite_header "$db" && return 0
    bytes=$(wc -c <"$db" | tr -d ' ')
    state="$(dirname "$db")/.$(basename "$db")-litestream"
    # Never over an earlier set-aside file (a crash loop can set aside twice in a second).
    time=$(date -u +%Y%m%dT%H%M%SZ)
    stamp=$time
    n=0
    while [ -e "$db.invalid-$stamp" ] || [ -e "$state.invalid-$stamp" ]; do
        n=$((n + 1))
        stamp="$time-$n"
    done
    for f in "$db" "$db-wal" "$db-shm" "$state"; do
        if [ -e "$f" ]; then
            mv "$f" "$f.invalid-$stamp"
        fi
    done
    echo "litestream-entrypoint: $db ($bytes bytes) has no SQLite header; moved it aside to $db.invalid-$stamp and restoring the replica" >&2
}

# The database argument of `restore` is its last one; only the in-place restore guarded by
# -if-db-not-exists is affected (`restore -o <copy>` leaves the database alone).
if [ "${1-}" = restore ]; then
    if_db_not_exists=false
    for arg in "$@"; do
        [ "$arg" = -if-db-not-exists ] && if_db_not_exists=true
        last=$arg
    done
    if [ "$if_db_not_exists" = true ]; then
        set_aside_if_not_a_database "$last"
    fi
fi

# Litestream 0.5.17's S3 client brings its own http.Client, and the AWS SDK then fails at
# startup when AWS_CA_BUNDLE is set ("unable to add custom RootCAs HTTPClient").
unset AWS_CA_BUNDLE

exec "${LITESTREAM_BIN:-litestream}" "$@"
