#!/usr/bin/env bash
# Idempotent: installs Debian's chromium (headless browser for tests/e2e/test_dashboard.py) when absent.
# Exit 0 when chromium is (now) on PATH; 3 when it is absent and cannot be installed here (no apt-get / not
# root), so a caller can skip with that reason.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_chromium: chromium is missing and apt-get is unavailable: install Chromium by hand" >&2
  exit 3
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "install_chromium: chromium is missing and installing it needs root (apt-get install chromium)" >&2
    exit 3
  fi
fi
export DEBIAN_FRONTEND=noninteractive
# A lock held by another apt run: wait for it rather than fail.
$SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq
$SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends chromium >/dev/null
command -v chromium >/dev/null 2>&1
