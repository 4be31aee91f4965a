#!/usr/bin/env bash
# Installs Debian's Chromium for the headless browser tests (Playwright drives it; no browser
# download of its own). Needs root, or sudo without a password.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-chromium: need root or sudo" >&2; exit 1; }
    SUDO="sudo"
fi
echo "installing chromium (apt-get, about 100 MB)..."
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
chromium --version
