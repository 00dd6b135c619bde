#!/usr/bin/env bash
# Install what the tests and the bench need from outside PyPI, only when it is missing.
#
# Idempotent and non-interactive: Debian packages (slapd, ldap-utils, pgbouncer, haproxy, chromium,
# openssh-client, the PostgreSQL 15 client and, if no initdb is found, the server),
# and node-postgres into tests/node/. System services are never started: a
# policy-rc.d that answers 101 is in place while apt-get runs. Run as root (CI is).
set -euo pipefail

cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

log() { printf 'install-deps: %s\n' "$*" >&2; }

installed() {  # installed PACKAGE: true when dpkg has it fully installed
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

have_initdb() {
    command -v initdb >/dev/null 2>&1 || [ -x /usr/lib/postgresql/15/bin/initdb ]
}

want=()
for pkg in slapd ldap-utils pgbouncer openssh-client haproxy chromium; do
    installed "$pkg" || want+=("$pkg")
done
command -v psql >/dev/null 2>&1 && command -v pgbench >/dev/null 2>&1 || want+=(postgresql-client-15)
have_initdb || want+=(postgresql-15)
command -v node >/dev/null 2>&1 || want+=(nodejs)
command -v npm >/dev/null 2>&1 || want+=(npm)

if [ "${#want[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        log "missing Debian packages: ${want[*]} (run this script as root to install them)"
        exit 1
    fi
    log "installing ${want[*]}"
    # Keep services down while packages install: policy-rc.d 101 = "action forbidden".
    policy=/usr/sbin/policy-rc.d
    saved=""
    if [ -e "$policy" ]; then
        saved="$(mktemp)"
        cp -p "$policy" "$saved"
    fi
    restore_policy() {
        if [ -n "$saved" ]; then mv -f "$saved" "$policy"; else rm -f "$policy"; fi
    }
    trap restore_policy EXIT
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    # slapd: no system directory (tests run their own slapd.conf);
    # postgresql: no "main" cluster (tests run initdb themselves).
    echo 'slapd slapd/no_configuration boolean true' | debconf-set-selections
    if [[ " ${want[*]} " == *" postgresql-15 "* ]]; then
        mkdir -p /etc/postgresql-common
        [ -e /etc/postgresql-common/createcluster.conf ] ||
            echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.conf
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
    restore_policy
    trap - EXIT
fi

# PostgreSQL refuses to run initdb as root; the tests run it as this user.
if [ "$(id -u)" -eq 0 ] && ! getent passwd postgres >/dev/null; then
    log "creating the postgres system user"
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

# node-postgres for the Node.js smoke test; reinstalled when the manifest changes.
node_dir=tests/node
stamp="$node_dir/node_modules/.hoopd-stamp"
if [ ! -e "$stamp" ] || [ "$node_dir/package.json" -nt "$stamp" ] || [ "$node_dir/package-lock.json" -nt "$stamp" ]; then
    log "installing node-postgres into $node_dir"
    (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    touch "$stamp"
fi
