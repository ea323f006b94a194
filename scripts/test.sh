#!/usr/bin/env bash
# Set up, check style, types and layering, then run the whole test suite (needs root: the
# data-plane and integration tests make network namespaces). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff" && .venv/bin/ruff check .
echo "== mypy --strict" && .venv/bin/mypy
echo "== import-linter" && .venv/bin/lint-imports
# The real Kubernetes control plane of tests/k8s: built from Go modules once per machine
# (about 15 minutes on 2 cores), cached in ~/.cache/service-mobility; seconds when cached.
echo "== k8s assets" && bash scripts/k8s_assets.sh >/dev/null
echo "== pytest"
exec .venv/bin/pytest "$@"
