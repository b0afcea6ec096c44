#!/usr/bin/env bash
# Installs what tests/s2s_interop.rs needs, on a fresh Debian machine;
# idempotent: Debian's ejabberd, prosody and lua-unbound packages (only
# when missing).
# The packaged services are stopped and disabled: the test runs its own
# instances (own config, own data directory, own loopback address) as the
# current user, never the system ones.
set -euo pipefail

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "interop/s2s-setup.sh: need root (or sudo) for: $*" >&2
        exit 1
    fi
}

missing=()
command -v ejabberdctl >/dev/null 2>&1 || [ -x /usr/sbin/ejabberdctl ] || missing+=(ejabberd)
command -v prosody >/dev/null 2>&1 || [ -x /usr/bin/prosody ] || missing+=(prosody)
# Prosody resolves through libunbound when lua-unbound is there, which can
# read a hosts file of the test's (the legacy resolver cannot).
dpkg-query -W -f='${Status}' lua-unbound 2>/dev/null | grep -q "ok installed" || missing+=(lua-unbound)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "interop/s2s-setup.sh: installing ${missing[*]}"
    as_root apt-get update -q
    # Do not start the packaged services while installing (no init in containers,
    # and their ports would collide with the test's).
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod +x "$policy"
        created_policy=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    if [ "$created_policy" -eq 1 ]; then
        as_root rm -f "$policy"
    fi
fi
# Stop packaged instances that may be running (they would hold 5222/5269).
for svc in ejabberd prosody; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
        as_root systemctl stop "$svc" || true
    fi
done
echo "interop/s2s-setup.sh: ejabberd $(dpkg-query -W -f='${Version}' ejabberd 2>/dev/null || echo '?'), prosody $(dpkg-query -W -f='${Version}' prosody 2>/dev/null || echo '?')"
