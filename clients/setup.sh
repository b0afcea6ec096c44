#!/usr/bin/env bash
# Installs what tests/interop.rs (the client interop matrix) needs, on a fresh
# Debian machine; idempotent (installs only what is missing):
#   - Debian packages: python3-slixmpp (for Debian's /usr/bin/python3),
#     mcabber and tmux (a headless command-line client that receives),
#     sendxmpp (a command-line client that sends);
#   - nodejs/npm, and the pinned xmpp.js (@xmpp/client) in clients/xmppjs/
#     with `npm ci` when node_modules is missing or older than the lock file.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "clients/setup.sh: need root (or sudo) for: $*" >&2
        exit 1
    fi
}

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        as_root apt-get update -q
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

want=()
/usr/bin/python3 -c 'import slixmpp' >/dev/null 2>&1 || want+=(python3-slixmpp)
command -v mcabber >/dev/null 2>&1 || want+=(mcabber)
command -v tmux >/dev/null 2>&1 || want+=(tmux)
command -v sendxmpp >/dev/null 2>&1 || want+=(sendxmpp)
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    want+=(nodejs npm)
fi
if [ "${#want[@]}" -gt 0 ]; then
    echo "clients/setup.sh: installing ${want[*]}"
    apt_install "${want[@]}"
fi

node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
    echo "clients/setup.sh: xmpp.js 0.14 needs Node.js 20 or newer; found $(node --version)" >&2
    exit 1
fi

# npm ci when node_modules is missing or was installed from another lock file.
dir="$here/xmppjs"
stamp="$dir/node_modules/.palaver-lock.sha256"
lock="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
if [ ! -d "$dir/node_modules" ] || [ "$lock" != "$have" ]; then
    echo "clients/setup.sh: npm ci in clients/xmppjs/"
    # No install scripts are needed: the packages are plain JavaScript.
    (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund)
    echo "$lock" >"$stamp"
fi

echo "clients/setup.sh: ready (slixmpp $(/usr/bin/python3 -c 'import slixmpp; print(slixmpp.__version__)');" \
    "xmpp.js $(node -p "require('$dir/node_modules/@xmpp/client/package.json').version");" \
    "$(mcabber --version 2>/dev/null | head -n1);" \
    "sendxmpp $(dpkg-query -W -f='${Version}' sendxmpp 2>/dev/null || echo '?'))"
