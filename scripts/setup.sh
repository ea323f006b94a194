#!/usr/bin/env bash
# Set up a Debian machine (as root) for service-mobility: system packages, a virtualenv in
# .venv with the project and its dev tools. Idempotent: what is there already is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[2m[setup] %s\033[0m\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: run as root (the lab makes network namespaces; apt-get installs packages)" >&2
    exit 2
fi

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-benchmark >/dev/null || missing+=(redis-tools)
command -v iperf3 >/dev/null || missing+=(iperf3)
command -v ip >/dev/null || missing+=(iproute2)
command -v nsenter >/dev/null || missing+=(util-linux)
command -v openssl >/dev/null || missing+=(openssl)
command -v ping >/dev/null || missing+=(iputils-ping)
command -v python3 >/dev/null || missing+=(python3)
# the lab runs its pods as OCI containers under its own containerd; images are built here
command -v containerd >/dev/null || missing+=(containerd)
command -v runc >/dev/null || missing+=(runc)
command -v debootstrap >/dev/null || missing+=(debootstrap)
# the dashboard's browser test (Playwright drives Debian's chromium: no browser download)
command -v chromium >/dev/null || missing+=(chromium)
# the compose site's test: Debian's docker engine and docker-compose 1.29
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v go >/dev/null; then
    echo "setup: Go (1.24 or newer) is needed to build the Kubernetes test control plane;" \
         "this kind of machine ships it" >&2
fi

python3 - <<'PY' || { echo "setup: Python 3.11 or newer is needed" >&2; exit 2; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

stamp=.venv/.installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    python3 -m venv .venv
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "installing the project and its dev tools into .venv"
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[dev]'
    echo "$want" > "$stamp"
fi
# The reference workloads' images: a Debian rootfs with Python (debootstrap, ~40 s, cached
# under ~/.cache/service-mobility), then the images built from the project's own files
# (cached by a hash of those files, rebuilt when they change).
bash scripts/base_rootfs.sh
.venv/bin/python -m dataplane.lab.images build >/dev/null
say "ready"
