#!/usr/bin/env bash
# A compose client to validate deploy/compose.yaml: `docker compose` if present, else Debian's docker-compose.
set -euo pipefail
if docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "No compose client; install one with: sudo apt-get install -y docker-compose" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq docker-compose >/dev/null
