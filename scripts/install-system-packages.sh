#!/usr/bin/env bash
# Debian packages of the hospital set-up: Orthanc with its DICOMweb plugin (the PACS the tests and
# the README run against) and Chromium (the browser test of OHIF). Installs only what is missing,
# runs `apt-get update` only when the package lists do not know a package, and never leaves the
# Orthanc service running: the tests and `scripts/pacs.py start` run their own Orthanc.
# Set WHOLEBODY_SKIP_SYSTEM_PACKAGES=1 to skip (the PACS and browser tests then fail and say why).
set -euo pipefail

[ "${WHOLEBODY_SKIP_SYSTEM_PACKAGES:-0}" = 1 ] && exit 0
packages=(orthanc orthanc-dicomweb chromium fonts-dejavu-core dicom3tools)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
  echo "setup: not a Debian system; install ${missing[*]} by hand for the PACS and browser tests" >&2; exit 0
fi
sudo=()
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo=(sudo -n); else
    echo "setup: cannot install ${missing[*]} (not root, no sudo): the PACS and browser tests will fail" >&2; exit 0
  fi
fi

echo "setup: installing Debian packages ${missing[*]}" >&2
for p in "${missing[@]}"; do
  if ! apt-cache policy "$p" 2>/dev/null | grep -q "Candidate: [0-9]"; then
    "${sudo[@]}" apt-get update -q >&2
    break
  fi
done

# Keep the package scripts from starting (or restarting) the system-wide Orthanc service on
# port 8042: a policy-rc.d that denies every action, only for this install, unless one exists.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
  "${sudo[@]}" chmod 755 "$policy"
  own_policy=1
fi
cleanup() { [ "$own_policy" = 1 ] && "${sudo[@]}" rm -f "$policy"; return 0; }
trap cleanup EXIT
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
