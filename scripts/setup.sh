#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine (run as root or with sudo):
# the Fashion-MNIST Debian package, then a virtualenv in .venv holding the
# package with its pinned dependencies. A second run takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then
  echo "setup: installing Debian package dataset-fashion-mnist" >&2
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq dataset-fashion-mnist >/dev/null
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
