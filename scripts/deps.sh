#!/bin/sh
# Installs what charter needs to build, test and benchmark, from Debian's packages.
# Idempotent: packages already present are not touched, and apt-get runs only when
# something is missing. Needs root (or sudo) only when it has something to install.
set -eu

PKGS="build-essential cmake pkg-config git ca-certificates curl jq python3 procps
libh2o-evloop-dev libuv1-dev libssl-dev zlib1g-dev libjansson-dev libsqlite3-dev
sqlite3 libsodium-dev libyaml-dev libhiredis-dev libcurl4-openssl-dev libcmocka-dev
nginx-light wrk redis-server redis-tools"

missing=""
for p in $PKGS; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing="$missing $p"
	fi
done
[ -z "$missing" ] && exit 0

echo "deps: installing$missing" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
# A stale package list is the usual reason an install fails on a fresh machine.
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
# Debian starts the services it installs; charter's scripts start their own private
# instances on loopback, so the system-wide ones are stopped to keep ports free.
for svc in nginx redis-server; do
	if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl stop "$svc" 2>/dev/null || true; fi
	$SUDO service "$svc" stop >/dev/null 2>&1 || true
done
