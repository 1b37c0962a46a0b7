#!/usr/bin/env bash
# Build one pinned env from its lock file, then prove it imports.
# usage: scripts/build_env.sh NAME ENV_DIR LOCK_FILE STAMP_FILE
# The lock is the whole dependency closure (pip freeze of a resolved install), so it is
# installed with --no-deps: nothing outside it (gradio, a torchvision that cannot load beside
# torch 2.13.0+cpu) is pulled back in. The stamp is written only after the smoke import passes,
# so an interrupted build is redone next time.
set -euo pipefail
name=$1 env=$2 lock=$3 stamp=$4
python=${PYTHON:-python3}

echo "== building the $name env in $env from $lock"
rm -rf "$env"
"$python" -m venv "$env"
# (the grep drops pip's notes about this machine's partial local index mirrors)
"$env/bin/python" -m pip install --no-deps -r "$lock" 2>&1 \
  | { grep -v "^WARNING: Location 'file:///opt/" || true; }
"$env/bin/python" "$(dirname "$0")/smoke_import.py" "$name"
touch "$stamp"
echo "== $name env ready"
