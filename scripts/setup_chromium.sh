#!/usr/bin/env bash
# Make Debian's Chromium available at /usr/bin/chromium, for scripts/check_plots.py (the test that
# `dvc plots` pages draw offline drives it with Playwright, which cannot download its own browser
# here). Idempotent: does nothing when it is already installed.
#
# Installs the `chromium` package with apt-get, as root or through sudo; a machine may reach a
# Debian mirror but no other network.
set -euo pipefail

CHROMIUM="/usr/bin/chromium"
[ -x "$CHROMIUM" ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    as_root=""
elif command -v sudo > /dev/null && sudo -n true 2> /dev/null; then
    as_root="sudo -n"
else
    echo "error: $CHROMIUM is missing and this script can install it only as root or with" \
         "passwordless sudo. Install it yourself (sudo apt-get install chromium) and run this" \
         "again." >&2
    exit 1
fi
command -v apt-get > /dev/null \
    || { echo "error: $CHROMIUM is missing and there is no apt-get to install it" >&2; exit 1; }

echo "Installing Debian's chromium (for scripts/check_plots.py)" >&2
export DEBIAN_FRONTEND=noninteractive
apt_install() { $as_root apt-get install -y -qq --no-install-recommends chromium; }
# The package lists may be stale or absent (a fresh container): update them once on failure.
{ apt_install || { $as_root apt-get update -qq && apt_install; }; } > /dev/null \
    || { echo "error: apt-get could not install chromium (is a Debian mirror reachable?)" >&2
         exit 1; }
[ -x "$CHROMIUM" ] || { echo "error: $CHROMIUM is still missing after the install" >&2; exit 1; }
