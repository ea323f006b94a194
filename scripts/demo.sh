#!/usr/bin/env bash
# Set up, bring the local lab and its control plane up, and move a live service core -> edge.
# Extra arguments go to `mobility demo` (e.g. --json).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mobility demo "$@"
