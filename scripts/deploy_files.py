#!/usr/bin/env python3
"""Fill deploy/k8s/files/ for one bank's node: its node config (container paths), genesis, and
the secrets from the bank's own folder (made by `consortium.py keygen`).

    python scripts/deploy_files.py BANK-X --bank-dir D --genesis genesis.json --out deploy/k8s/files

Then `kubectl apply -k deploy/k8s` in the bank's cluster (deploy/README.md). The secrets it
copies (node.key, tls.key) are written 0600; keep them out of version control (the folder's
.gitignore ignores everything but its README).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ledger.genesis import GenesisError, load_genesis  # noqa: E402
from node.config import NodeConfig  # noqa: E402

if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts"))
from members import BankFiles  # noqa: E402

# Where the container finds what the manifests mount (deploy/k8s/statefulset.yaml).
CONFIG_DIR = Path("/etc/ledger/config")
KEYS_DIR = Path("/etc/ledger/keys")
TLS_DIR = Path("/etc/ledger/tls")
DATA_DIR = Path("/var/lib/ledger/data")
REPLICA_PORT, API_PORT, METRICS_PORT = 7000, 7001, 9100


def node_config(bank: str) -> NodeConfig:
    """The node config inside the container: every node listens on the same container ports;
    the Services map the ports genesis lists for the bank onto them."""
    return NodeConfig(
        genesis_path=CONFIG_DIR / "genesis.json",
        member_id=bank,
        key_path=KEYS_DIR / "node.key",
        data_dir=DATA_DIR,
        api_listen=f"0.0.0.0:{API_PORT}",
        replica_listen=f"0.0.0.0:{REPLICA_PORT}",
        log_path=None,  # stderr: the container's log
        tls=True,
        tls_cert_path=TLS_DIR / "tls.crt",
        tls_key_path=TLS_DIR / "tls.key",
        metrics_listen=f"0.0.0.0:{METRICS_PORT}",
    )


def write_files(bank: str, bank_dir: Path, genesis_path: Path, out: Path) -> list[Path]:
    genesis = load_genesis(genesis_path)
    if genesis.member(bank) is None:
        raise GenesisError(f"{genesis_path}: {bank} is not a member")
    files = BankFiles(bank_dir, bank)
    for needed in (files.node_key, files.tls_cert, files.tls_key):
        if not needed.exists():
            raise FileNotFoundError(f"{needed}: missing (run `consortium.py keygen {bank}` in {bank_dir})")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for src, name, secret in (
        (genesis_path, "genesis.json", False),
        (files.node_key, "node.key", True),
        (files.tls_cert, "tls.crt", False),
        (files.tls_key, "tls.key", True),
    ):
        dst = out / name
        shutil.copyfile(src, dst)
        dst.chmod(0o600 if secret else 0o644)
        written.append(dst)
    config = out / "config.json"
    config.write_text(node_config(bank).to_json())
    written.append(config)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bank", help="member id, e.g. BANK-X")
    parser.add_argument("--bank-dir", type=Path, required=True, help="the bank's folder from keygen")
    parser.add_argument("--genesis", type=Path, required=True, help="the consortium's genesis.json")
    parser.add_argument("--out", type=Path, default=ROOT / "deploy" / "k8s" / "files")
    args = parser.parse_args(argv)
    try:
        for path in write_files(args.bank, args.bank_dir, args.genesis, args.out):
            print(path)
    except (GenesisError, FileNotFoundError) as exc:
        print(f"deploy_files: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
