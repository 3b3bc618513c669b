#!/usr/bin/env bash
# The main job: set up .venv if needed, then start a local 4-bank consortium (separate processes,
# real gRPC on 127.0.0.1), walk through the tokenized-deposit lifecycle including a node crash and
# its catch-up, print balances and supply, and stop every process it started. Every port is TLS
# (mutual between nodes, each bank its own CA listed in genesis); `--insecure` runs plaintext.
# Extra arguments go to `scripts/consortium.py demo` (see --help there).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
dir=${DEMO_DIR:-./consortium-demo}
exec .venv/bin/python scripts/consortium.py demo --dir "$dir" "$@"
