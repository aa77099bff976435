#!/usr/bin/env bash
# Make sure Debian's prometheus (the server and promtool) is installed; install it if not.
# The tests, `make bench-observe` and `make monitor` run a private Prometheus on their own
# loopback port and data directory, so a system service the package may start is never used.
set -euo pipefail

installed() { command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; }

if installed; then
  exit 0
fi
echo "prometheus or promtool not found: installing Debian's prometheus with apt-get" >&2
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
installed || { echo "prometheus/promtool still missing after apt-get install" >&2; exit 1; }
