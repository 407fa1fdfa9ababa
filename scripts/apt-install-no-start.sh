#!/usr/bin/env bash
# Install Debian packages without letting them start services: bird2 would otherwise start BIRD in
# the machine's root namespace, which podnet's lab must never do (BIRD runs only inside lab nodes).
set -euo pipefail
policy=/usr/sbin/policy-rc.d
created=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && created=1
fi
trap '[ "$created" = 1 ] && rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "$@"
if command -v systemctl >/dev/null 2>&1 && systemctl list-unit-files bird.service >/dev/null 2>&1; then
  systemctl disable bird.service >/dev/null 2>&1 || true
fi
