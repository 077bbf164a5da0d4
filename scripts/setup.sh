#!/usr/bin/env bash
# Creates (once) the Python environment pinned by requirements.lock and prints its path.
# The environment lives outside the clone, keyed by the lock file's hash, so a second run,
# or a fresh clone on the same machine, reuses it instead of reinstalling 8 GB.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lock="$root/requirements.lock"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
"$python" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' >&2 || {
  echo "setup: Python 3.11 is required (found $("$python" --version 2>&1))" >&2; exit 1; }

# --- hospital set-up: Debian packages for the PACS (Orthanc + DICOMweb) and browser (Chromium) tests
"$root/scripts/install-system-packages.sh" >&2
# ---

hash="$(sha256sum "$lock" | cut -c1-12)"
venv="${WHOLEBODY_VENV:-$HOME/.cache/wholebody/venv-$hash}"
mkdir -p "$(dirname "$venv")"
# Two set-ups at once (a server and the tests, say) must not build the same environment twice.
exec 9>"$venv.lock"
flock 9
if [ ! -f "$venv/.installed" ]; then
  echo "setup: installing pinned dependencies into $venv (first run: about 5 minutes)" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q -r "$lock" >&2
  # The registry's torch is a CUDA build that also runs on CPU; check the pair imports together.
  "$venv/bin/python" -c 'import torch, torchvision, monai, monailabel' >&2
  touch "$venv/.installed"
fi
echo "$venv"
