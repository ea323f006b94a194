#!/usr/bin/env bash
# Build the images and start or stop a compose site (docker-compose.yml) on this machine:
#   sudo scripts/compose_site.sh build                 # images only (cached by a hash of the tree)
#   sudo scripts/compose_site.sh up [--name smsite] [--underlay 198.18.0.0/16] \
#        [--redis-port 6379] [--api-port 8470]          # dockerd, images, nodes, compose up
#   sudo scripts/compose_site.sh status|down [--name smsite]
# `up` prints the API's address and where its admin token is. Everything runs on a dockerd of
# the site's own (socket under /run/service-mobility-compose/<name>/docker, bridge and pool in
# 198.19.250.0/23), never the host's; see cli/compose_site.py. Needs root, docker.io,
# docker-compose and the base rootfs (scripts/setup.sh installs them; scripts/base_rootfs.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" -m cli.compose_site "$@"
