#!/bin/sh
# Runs Litestream (`restore` in the init container, `replicate` in the sidecar) only when the
# variables litestream.yml expands are usable. Litestream turns an unset ${VAR} into "", so
# without this check a pod with no ordinal, cluster or namespace would replicate into a path
# shared with other pods ("gateway-", "//gateway-0") and corrupt their backups. POSIX sh: the
# official Litestream image is Alpine.
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

# Litestream 0.5.17's S3 client brings its own http.Client, and the AWS SDK then fails at
# startup when AWS_CA_BUNDLE is set ("unable to add custom RootCAs HTTPClient").
unset AWS_CA_BUNDLE

exec "${LITESTREAM_BIN:-litestream}" "$@"
