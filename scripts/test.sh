#!/usr/bin/env bash
# The whole check: stubs match the protos, vectors match the code, ruff, mypy --strict, then every test.
# Extra arguments go to pytest (e.g. scripts/test.sh -k ledger -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
py=.venv/bin/python
echo "== gen_proto --check"; $py scripts/gen_proto.py --check
echo "== gen_vectors --check"; $py scripts/gen_vectors.py --check
echo "== ruff";              $py -m ruff check . && $py -m ruff format --check .
echo "== mypy --strict";     $py -m mypy .
echo "== pytest";            $py -m pytest -q "$@"
