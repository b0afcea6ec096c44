#!/bin/sh
# Defaults for the variables the image's config uses, then palaver.
set -eu
: "${XMPP_DOMAIN:=localhost}"
: "${PALAVER_ADMIN:=admin@${XMPP_DOMAIN}}"
: "${PALAVER_LOGLEVEL:=info}"
if [ -z "${PALAVER_CONFIG:-}" ]; then
    if [ -n "${PALAVER_DB_URL:-}" ]; then
        PALAVER_CONFIG=/etc/palaver/palaver-pgsql.yml
    else
        PALAVER_CONFIG=/etc/palaver/palaver.yml
    fi
fi
export XMPP_DOMAIN PALAVER_ADMIN PALAVER_LOGLEVEL PALAVER_CONFIG
exec palaver "$@"
