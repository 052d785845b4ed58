#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine (run as root or with sudo):
# the Debian data packages, then a virtualenv in .venv holding the
# package with its pinned dependencies. A second run takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages holding the offline data: Fashion-MNIST (images), WordNet
# and the GCIDE dictionary (text), Open Clip Art drawings with rsvg-convert
# to rasterise them (image-text). Only missing ones are installed.
missing=()
[ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] ||
  missing+=(dataset-fashion-mnist)
[ -f /usr/share/wordnet/data.noun ] || missing+=(wordnet-base)
[ -f /usr/share/dictd/gcide.dict.dz ] || missing+=(dict-gcide)
[ -d /usr/share/openclipart/svg ] || missing+=(openclipart-svg)
command -v rsvg-convert >/dev/null || missing+=(librsvg2-bin)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages ${missing[*]}" >&2
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Reinstall only when setup.py (the dependency list) changes.
stamp=".venv/.installed-$(sha256sum setup.py | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: creating .venv and installing mrl_jax[test] (a few minutes)" >&2
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  rm -f .venv/.installed-*
  touch "$stamp"
fi
