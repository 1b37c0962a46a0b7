#!/usr/bin/env bash
# Headless Chromium for the test that renders leaderboard/<recipe>/index.html (Debian's
# package; nothing else needs a browser). Skipped with a note where it cannot be installed.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian chromium (headless render test of index.html)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
    echo "note: chromium not installed and not root with apt-get; the index.html render test will be skipped"
fi
