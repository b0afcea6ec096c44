#!/usr/bin/env bash
# Installs what tests/browser.rs needs, on a fresh Debian machine; idempotent.
#   - Debian's Chromium at /usr/bin/chromium (apt, only when it is missing);
#   - the pinned npm packages (converse.js, playwright-core) in browser/node_modules,
#     with `npm ci` when node_modules is missing or older than package-lock.json.
# Never downloads a browser build of its own (no `playwright install`).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "browser/setup.sh: need root (or sudo) for: $*" >&2
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

if [ ! -x /usr/bin/chromium ]; then
    echo "browser/setup.sh: installing Debian's chromium"
    apt_install chromium
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "browser/setup.sh: installing nodejs and npm"
    apt_install nodejs npm
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
    echo "browser/setup.sh: playwright-core needs Node.js 20 or newer; found $(node --version)" >&2
    exit 1
fi

# npm ci when node_modules is missing or was installed from another lock file.
stamp="$here/node_modules/.palaver-lock.sha256"
want="$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
if [ ! -d "$here/node_modules" ] || [ "$want" != "$have" ]; then
    echo "browser/setup.sh: npm ci in browser/"
    # No install scripts are needed (Converse ships a built dist/; Chromium is Debian's).
    (cd "$here" && npm ci --ignore-scripts --no-audit --no-fund)
    echo "$want" >"$stamp"
fi

echo "browser/setup.sh: ready ($(/usr/bin/chromium --version 2>/dev/null | head -n1);" \
    "converse.js $(node -p "require('$here/node_modules/converse.js/package.json').version");" \
    "playwright-core $(node -p "require('$here/node_modules/playwright-core/package.json').version"))"
