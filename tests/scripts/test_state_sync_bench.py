"""scripts/state_sync_bench.py build at tiny scale: its JSON line's figures, and the chain it
leaves (counted again here, block by block) holds what it says, with every account funded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from consortium import Consortium  # noqa: E402
from state_sync_bench import FUND_MINOR, STATE_FILE  # noqa: E402

from client.sdk import LedgerClient  # noqa: E402
from ledger.crypto import SigningKey  # noqa: E402

ACCOUNTS = 20
TXS = 200


def chain_txs(client: LedgerClient, reader: SigningKey) -> tuple[int, int]:
    """(transactions, height): the sum of every block header's tx_count, verified blocks."""
    txs = height = 0
    while True:
        got = client.blocks(height + 1, 512, as_key=reader)
        for verified in got.blocks:
            txs += verified.block.header.tx_count
            height = verified.block.header.height
        if not got.blocks:
            return txs, height


@pytest.mark.timeout(120)
def test_build_loads_the_chain_it_reports(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    cmd = [sys.executable, str(ROOT / "scripts" / "state_sync_bench.py"), "build", "--dir", str(directory)]
    cmd += ["--accounts", str(ACCOUNTS), "--txs", str(TXS), "--insecure", "--batch", "50"]
    c = Consortium(directory)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=100, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["accounts"] == ACCOUNTS
        assert out["txs"] >= TXS and out["txs_this_run"] == out["txs"]
        assert out["height"] >= 1 and out["seconds"] > 0 and out["tx_per_s"] > 0
        banks = c.banks()
        assert sorted(out["disk_bytes"]) == banks and all(b > 0 for b in out["disk_bytes"].values())
        assert all(c.pid(b) is not None for b in banks), "the nodes keep running after a build"
        state = json.loads((directory / STATE_FILE).read_text())
        accounts = state["accounts"]
        assert len(accounts) == ACCOUNTS and state["opened"] == state["minted"] == ACCOUNTS
        with LedgerClient(c.genesis(), insecure=True) as client:
            txs, height = chain_txs(client, SigningKey(bytes.fromhex(accounts[0][2])))
            assert txs >= out["txs"] >= TXS and height >= out["height"]
            total: dict[str, int] = {}
            for account_id, asset, seed in accounts:
                info = client.account(account_id, as_key=SigningKey(bytes.fromhex(seed)))
                total[asset] = total.get(asset, 0) + info.balance(asset).available_minor
        # Every account was funded once, and transfers only move money within an asset.
        per_asset = {asset: 0 for _, asset, _ in accounts}
        for _, asset, _ in accounts:
            per_asset[asset] += FUND_MINOR
        assert total == per_asset
    finally:
        report = c.down()  # by the pids in the nodes' pid files
        assert all("SIGKILL" not in line for line in report), report
