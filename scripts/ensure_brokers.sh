#!/usr/bin/env bash
# Make sure rabbitmq-server and redis-server (Debian packages) are installed; install them if not.
# The queue bridge's tests and `make bridge` run private copies on their own loopback ports and
# data directories, so a system service the package may start on 5672/6379 is never used.
set -euo pipefail

installed() { [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] && command -v redis-server >/dev/null 2>&1; }

if installed; then
  exit 0
fi
echo "rabbitmq-server or redis-server not found: installing them with apt-get" >&2
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends rabbitmq-server redis-server >/dev/null
installed || { echo "rabbitmq-server/redis-server still missing after apt-get install" >&2; exit 1; }
