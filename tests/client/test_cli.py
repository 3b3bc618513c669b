"""ledgerctl against in-process fake nodes: every command, its output and its exit code."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.cli import run
from ledger.crypto import save_key
from tests.client.fakes import FakeChain, FakeNode, closed_port, lie_about_result, serve


class Cli:
    def __init__(self, base: Path, endpoints: list[str], capsys: pytest.CaptureFixture[str]) -> None:
        self.base, self.endpoints, self.capsys = base, endpoints, capsys

    def __call__(self, *argv: str, wallet: str | None = None) -> tuple[int, str, str]:
        flags = ["--dir", str(self.base), "--timeout", "3"]
        for ep in self.endpoints:
            flags += ["--node", ep]
        if wallet:
            flags += ["--wallet", wallet]
        code = run([*flags, *argv])
        captured = self.capsys.readouterr()
        assert "Traceback" not in captured.err
        return code, captured.out, captured.err


def _consortium_dir(chain: FakeChain, base: Path) -> Path:
    (base / "genesis.json").write_text(chain.genesis.to_json())
    for bank in chain.banks:
        save_key(
            base / "keys" / f"{bank.member_id}.operator.key", bank.operator_key, f"{bank.member_id} operator"
        )
    return base


@pytest.fixture
def chain() -> FakeChain:
    return FakeChain()


@pytest.fixture
def cli(chain: FakeChain, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Cli]:
    with serve([FakeNode(chain) for _ in range(4)]) as endpoints:
        yield Cli(_consortium_dir(chain, tmp_path), endpoints, capsys)


def _jrun(cli: Cli, *argv: str, wallet: str | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    code, out, err = cli("--json", *argv, wallet=wallet)
    return code, (json.loads(out) if out.strip() else {"stderr": err})


def _balances(cli: Cli, account: str) -> dict[str, str]:
    code, doc = _jrun(cli, "balance", account)
    assert code == 0, doc
    return {b["asset"]: b["available"] for b in doc["balances"]}


def _open_two_accounts(cli: Cli) -> None:
    for label, bank in (("alice", "BANK-A"), ("bob", "BANK-B")):
        assert cli("keys", "new", label)[0] == 0
        code, out, _ = cli("account", "open", label, "--bank", bank, "--owner", label)
        assert code == 0 and "committed: OK" in out, out
    assert cli("mint", "125.50", "USD.BANK-A", "--to", "alice", "--ref", "dep-1")[0] == 0
    assert cli("mint", "80.00", "EUR.BANK-B", "--to", "bob", "--ref", "dep-2")[0] == 0


def test_lifecycle_through_the_cli(cli: Cli) -> None:
    _open_two_accounts(cli)
    code, out, _ = cli("keys", "list")
    assert code == 0 and "alice" in out and "BANK-A operator" in out
    assert _balances(cli, "alice") == {"USD.BANK-A": "125.50"}
    code, doc = _jrun(cli, "balance", "alice", "--confirmations", "3")
    assert code == 0 and doc["balances"][0]["available"] == "125.50"

    code, doc = _jrun(cli, "transfer", "alice", "bob", "25.05", "USD.BANK-A")
    assert code == 0 and doc["status"] == "committed" and doc["result"] == "OK"
    assert doc["commit_signers"] == [0, 1, 2] and len(doc["attested_by"]) == 2
    tx_id = doc["tx_id"]
    code, doc = _jrun(cli, "tx", tx_id)
    assert code == 0 and doc["tx_id"] == tx_id and doc["height"] == 5

    # Multi-leg, all or nothing: the second leg lacks funds, so neither moves.
    code, doc = _jrun(
        cli, "transfer", "alice", "bob", "1.00", "USD.BANK-A", "--leg", "alice", "bob", "999.00", "USD.BANK-A"
    )
    assert code == 1 and doc["result"] == "INSUFFICIENT_FUNDS"
    assert _balances(cli, "alice") == {"USD.BANK-A": "100.45"}

    code, out, _ = cli("pvp", "alice", "bob", "50.00", "USD.BANK-A", "45.00", "EUR.BANK-B")
    assert code == 0 and "committed: OK" in out
    assert _balances(cli, "alice") == {"USD.BANK-A": "50.45", "EUR.BANK-B": "45.00"}
    assert _balances(cli, "bob") == {"USD.BANK-A": "75.05", "EUR.BANK-B": "35.00"}

    assert cli("escrow", "create", "esc-1", "alice", "bob", "10.00", "USD.BANK-A")[0] == 0
    code, doc = _jrun(cli, "balance", "alice")
    assert doc["balances"][1] == {
        "asset": "USD.BANK-A",
        "available": "40.45",
        "held": "10.00",
        "available_minor": 4045,
        "held_minor": 1000,
    }
    assert cli("escrow", "post", "esc-1", "4.00", "USD.BANK-A", "--by", "alice")[0] == 0
    assert _balances(cli, "bob")["USD.BANK-A"] == "79.05"
    assert cli("escrow", "create", "esc-2", "alice", "bob", "1.00", "USD.BANK-A")[0] == 0
    assert cli("escrow", "void", "esc-2", "--by", "bob")[0] == 0  # the payee may void
    assert _balances(cli, "alice")["USD.BANK-A"] == "46.45"

    assert cli("redeem", "alice", "6.45", "USD.BANK-A", "--ref", "pay-1")[0] == 0
    code, out, _ = cli("supply")
    assert code == 0 and "USD.BANK-A" in out and "125.50" in out and "119.05" in out

    assert cli("account", "freeze", "bob")[0] == 0
    code, out, _ = cli("transfer", "alice", "bob", "1.00", "USD.BANK-A")
    assert code == 1 and "ACCOUNT_FROZEN" in out
    assert cli("account", "unfreeze", "bob")[0] == 0
    assert cli("transfer", "alice", "bob", "1.00", "USD.BANK-A")[0] == 0

    code, out, _ = cli("block", "5")
    assert code == 0 and "verified" in out and tx_id in out
    code, doc = _jrun(cli, "status")
    assert code == 0 and len(doc) == 4 and all(d["up"] for d in doc)


def test_pvp_signed_by_two_parties_with_separate_wallets(cli: Cli, tmp_path: Path) -> None:
    _open_two_accounts(cli)  # both keys in the shared wallet; move bob's key to his own wallet
    bob_wallet = tmp_path / "bob-wallet"
    bob_wallet.mkdir()
    (cli.base / "wallet" / "bob.key").rename(bob_wallet / "bob.key")
    env = str(tmp_path / "pvp.env")
    code, _, err = cli("pvp", "alice", "bob", "10.00", "USD.BANK-A", "9.00", "EUR.BANK-B")
    assert code == 2 and "no key for the owner of bob" in err
    code, out, _ = cli("pvp", "alice", "bob", "10.00", "USD.BANK-A", "9.00", "EUR.BANK-B", "--out", env)
    assert code == 0 and "1 signature(s)" in out
    code, out, _ = cli("sign", env, wallet=str(bob_wallet))
    assert code == 0 and "2 signature(s)" in out
    code, out, _ = cli("submit", env)
    assert code == 0 and "committed: OK" in out
    assert _balances(cli, "bob")["USD.BANK-A"] == "10.00"


@pytest.mark.parametrize(
    ("argv", "exit_code", "message"),
    [
        (["mint", "1.234", "USD.BANK-A", "--to", "alice", "--ref", "d"], 2, "more than 2 decimal places"),
        (["mint", "-5", "USD.BANK-A", "--to", "alice", "--ref", "d"], 2, "negative"),
        (["mint", "1e3", "USD.BANK-A", "--to", "alice", "--ref", "d"], 2, "not a decimal amount"),
        (
            ["mint", "99999999999999999", "USD.BANK-A", "--to", "alice", "--ref", "d"],
            2,
            "above the ledger maximum",
        ),
        (["mint", "1.00", "USD.BANK-Q", "--to", "alice", "--ref", "d"], 2, "unknown asset 'USD.BANK-Q'"),
        (["balance", "nobody"], 3, "not found"),
        (["transfer", "nobody", "alice", "1.00", "USD.BANK-A"], 3, "account 'nobody'"),
        (["tx", "abcd"], 2, "not a transaction id"),
        (["tx", "00" * 32], 3, "not found"),
        (["block", "42"], 3, "not found"),
        (["transfer", "alice", "bob", "1.00"], 2, "4 arguments"),
        (["account", "open", "x", "--bank", "BANK-A", "--owner", "nokey"], 2, "neither a key label"),
        (["account", "open", "x", "--bank", "BANK-Z", "--owner", "00" * 32], 2, "unknown bank"),
        (["transfer", "alice", "bob", "1000.00", "USD.BANK-A"], 1, "INSUFFICIENT_FUNDS"),
        (["submit", "/nonexistent.env"], 2, "No such file"),
        (["keys", "new", "../x"], 2, "label"),
        (["balance", "alice", "--confirmations", "9"], 2, "--confirmations must be 1..4"),
    ],
)
def test_errors_are_friendly_with_documented_exit_codes(
    cli: Cli, argv: list[str], exit_code: int, message: str
) -> None:
    _open_two_accounts(cli)
    code, out, err = cli(*argv)
    assert code == exit_code, (out, err)
    assert message in out + err


def test_unreachable_nodes_missing_genesis_and_lying_nodes(
    chain: FakeChain, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = _consortium_dir(chain, tmp_path)
    code, out, err = Cli(base, [closed_port()], capsys)("balance", "alice")
    assert code == 4 and "are the nodes running" in err
    code, out, err = Cli(base, [closed_port()], capsys)(
        "mint", "1.00", "USD.BANK-A", "--to", "a", "--ref", "r"
    )
    assert code == 4 and "not confirmed in time" in out
    code, out, err = Cli(tmp_path / "nowhere", [], capsys)("status")
    assert code == 2 and "cannot read genesis" in err
    with serve([FakeNode(chain, tamper=lie_about_result)]) as endpoints:
        lying = Cli(base, endpoints, capsys)
        code, out, err = lying("mint", "1.00", "USD.BANK-A", "--to", "a", "--ref", "r")
        assert code == 4 and "no verifiable receipt" in out
        tx_id = next(iter(chain.receipts)).hex()
        code, out, err = lying("tx", tx_id)
        assert code == 5 and "did not verify" in err


def test_submit_takes_several_envelope_files_at_once(cli: Cli, tmp_path: Path) -> None:
    _open_two_accounts(cli)
    files = [str(tmp_path / f"pay{i}.env") for i in range(3)]
    for i, path in enumerate(files):
        code, out, _ = cli("transfer", "alice", "bob", f"{i + 1}.00", "USD.BANK-A", "--out", path)
        assert code == 0 and "1 signature(s)" in out
    code, out, _ = cli("submit", *files)
    assert code == 0, out
    assert [line.split(": ", 1)[0] for line in out.splitlines() if ": committed: OK" in line] == files
    assert _balances(cli, "bob")["USD.BANK-A"] == "6.00"

    too_much = str(tmp_path / "too-much.env")
    assert cli("transfer", "alice", "bob", "500.00", "USD.BANK-A", "--out", too_much)[0] == 0
    code, doc = _jrun(cli, "submit", files[0], too_much)
    assert code == 1, "one refused by the ledger: exit 1"
    assert [(d["file"], d["status"], d["result"]) for d in doc] == [
        (files[0], "committed", "OK"),  # a resubmission: its first result
        (too_much, "committed", "INSUFFICIENT_FUNDS"),
    ]
    code, _, err = cli("submit", files[0], str(tmp_path / "missing.env"))
    assert code == 2 and "missing.env" in err
