#!/usr/bin/env bash
# Sets everything up and runs the whole test suite (unit, then end-to-end against real servers).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$("$root/scripts/setup.sh")"
[ -d "$root/../shared/data" ] || { echo "test: ../shared/data (the shared CT) must sit beside the clone" >&2; exit 1; }
cd "$root"
export PATH="$venv/bin:$PATH"
exec python -m pytest tests "$@"
