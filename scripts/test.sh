#!/usr/bin/env bash
# The whole check: stubs match the protos, vectors match the code, ruff, mypy --strict, then every test.
# Extra arguments go to pytest (e.g. scripts/test.sh -k ledger -x).
set -euo pipefail
cd "$(dirname "$0")/.."
# System packages some tests drive, installed where we may (root with apt-get, as CI is):
# - chromium: the console's browser test (tests/client/test_console.py);
# - ip and tc (iproute2): the network-namespace chaos test (tests/chaos/test_chaos_netns.py).
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  [ -x /usr/bin/chromium ] || need+=(chromium)
  { command -v ip && command -v tc; } >/dev/null || need+=(iproute2)
  if [ ${#need[@]} -gt 0 ]; then
    echo "== apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
fi
if ! [ -x /usr/bin/chromium ] && [ "${CI:-}" != "true" ]; then
  # Not root here, so nothing installed it: say so loudly, and skip that one test (never in CI).
  echo "!! /usr/bin/chromium is missing: the console's browser test is skipped (apt-get install chromium)"
  export LEDGER_SKIP_BROWSER=1
fi
bash scripts/bootstrap.sh
py=.venv/bin/python
echo "== gen_proto --check"; $py scripts/gen_proto.py --check
echo "== gen_vectors --check"; $py scripts/gen_vectors.py --check
echo "== ruff";              $py -m ruff check . && $py -m ruff format --check .
echo "== mypy --strict";     $py -m mypy .
echo "== pytest";            $py -m pytest -q "$@"
