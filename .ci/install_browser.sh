#!/usr/bin/env bash
# Debian's Chromium for the browser end-to-end test. Playwright (from PyPI) drives it through its
# executable path; a test tool's own browser download cannot work on this network.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
chromium --version
