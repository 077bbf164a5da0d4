#!/usr/bin/env bash
# Sets everything up, writes the built-in phantom CT (once) and serves it on port 8000.
# Extra arguments go to `monailabel start_server` (e.g. --conf highres false).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$("$root/scripts/setup.sh")"
export PATH="$venv/bin:$PATH"
studies="${STUDIES:-$root/apps/wholebody/sample_studies}"
(cd "$root/apps/wholebody" && python -m lib.phantom "$studies")
exec monailabel start_server --app "$root/apps/wholebody" --studies "$studies" \
  --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" "$@"
