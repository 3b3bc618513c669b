#!/usr/bin/env python3
"""The tokenized-deposit lifecycle on a live 4-bank consortium, node failure included.

    python scripts/demo.py --dir PATH        (or: python scripts/consortium.py demo --dir PATH)

Brings up 4 nodes in PATH (one OS process per bank), opens client accounts at two banks, mints
USD.BANK-A and EUR.BANK-B against deposit references, transfers, settles a USD/EUR PvP
atomically, runs an escrow, redeems, SIGKILLs one node and keeps transacting, restarts it and
shows it caught up with the same state root, prints balances and supply, then stops every
process it started. Every receipt is verified against the genesis keys by the SDK. Exit status
0 when every step held, 1 otherwise (the failing step is named).
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from consortium import Consortium, ConsortiumError  # noqa: E402

from client.cli_output import print_accounts, print_supply, table  # noqa: E402
from client.models import Committed, NodeStatusInfo, NotAuthorized  # noqa: E402
from client.sdk import LedgerClient  # noqa: E402
from client.tx import LegSpec, Transaction  # noqa: E402
from client.wallet import Wallet  # noqa: E402
from ledger.crypto import SigningKey, load_key  # noqa: E402

KILLED = "BANK-D"  # not the view-0 primary: the others keep committing without a view change
CATCH_UP_S = 30.0


class DemoFailed(Exception):
    pass


class Demo:
    def __init__(self, directory: Path, insecure: bool = False) -> None:
        self.consortium = Consortium(directory)
        self.insecure = insecure  # a new consortium runs plaintext; an existing one keeps its setting
        self.run_id = secrets.token_hex(3)  # account and reference ids unique per run
        self.client: LedgerClient | None = None
        self.supply_before: dict[str, tuple[int, int]] = {}
        self.steps = 0

    def step(self, title: str, fn: Callable[[], str | None]) -> None:
        self.steps += 1
        started = time.monotonic()
        print(f"\n== {self.steps}. {title}")
        note = fn()
        print(f"   ok ({(time.monotonic() - started) * 1000:.0f} ms){': ' + note if note else ''}")

    def submit(self, what: str, tx: Transaction) -> Committed:
        assert self.client is not None
        outcome = self.client.submit(tx)
        if not isinstance(outcome, Committed):
            raise DemoFailed(f"{what}: {outcome}")
        if not outcome.ok:
            raise DemoFailed(f"{what}: committed but refused: {outcome.code_name} {outcome.detail}")
        r = outcome.receipt
        print(
            f"   {what}: committed at height {r.height}, commits by replicas {list(r.block.commit_signers)}, "
            f"attested by {list(r.attested.signers)} (verified)"
        )
        return outcome

    def run(self) -> None:
        c = self.consortium
        self.step("start a 4-bank consortium (one process per bank)", self._up)
        genesis = c.genesis()
        op = {m.member_id: load_key(c.operator_key_path(m.member_id)).key for m in genesis.members}
        # Reads need a key (docs/ARCHITECTURE.md, "Who may read"): supply with BANK-A's operator
        # key, each account below with its owner's.
        self.client = LedgerClient(
            genesis,
            timeout_s=20.0,
            call_timeout_s=2.0,
            receipt_wait_s=3.0,
            reader=op["BANK-A"],
            insecure=c.insecure,
        )
        # A directory can be reused: judge this run by how much the supply moved during it.
        self.supply_before = {
            s.asset: (s.minted_minor, s.redeemed_minor) for s in self.client.supply().assets
        }
        b = self.client.tx
        wallet = Wallet(c.dir / "wallet")
        alice_id, bob_id = f"alice-{self.run_id}", f"bob-{self.run_id}"
        alice = wallet.create(alice_id).key
        bob = wallet.create(bob_id).key
        usd, eur = "USD.BANK-A", "EUR.BANK-B"

        def open_accounts() -> str:
            self.submit(
                f"BANK-A opens {alice_id}",
                b.open_account("BANK-A", alice_id, alice.public_key).signed_by(op["BANK-A"]),
            )
            self.submit(
                f"BANK-B opens {bob_id}",
                b.open_account("BANK-B", bob_id, bob.public_key).signed_by(op["BANK-B"]),
            )
            return f"client keys in {wallet.directory}"

        def mint() -> None:
            self.submit(
                "BANK-A mints 1000.00 USD",
                b.mint(usd, alice_id, 100000, f"dep-A-{self.run_id}").signed_by(op["BANK-A"]),
            )
            self.submit(
                "BANK-B mints 900.00 EUR",
                b.mint(eur, bob_id, 90000, f"dep-B-{self.run_id}").signed_by(op["BANK-B"]),
            )

        def transfer() -> None:
            self.submit(
                "alice pays bob 125.50 USD",
                b.transfer([LegSpec(alice_id, bob_id, usd, 12550)]).signed_by(alice),
            )

        def pvp() -> str:
            tx = b.pvp(LegSpec(alice_id, bob_id, usd, 20000), LegSpec(bob_id, alice_id, eur, 18000))
            half = tx.signed_by(alice)  # alice signs, hands the envelope to bob, who co-signs
            full = Transaction.from_envelope(genesis.chain_id, half.envelope_bytes()).signed_by(bob)
            self.submit("PvP 200.00 USD <-> 180.00 EUR", full)
            return "both legs settled in one transaction, signed by both owners"

        def escrow() -> None:
            eid = f"esc-{self.run_id}"
            expires = int(time.time() * 1000) + 3_600_000
            self.submit(
                "alice escrows 50.00 USD for bob",
                b.escrow_create(eid, LegSpec(alice_id, bob_id, usd, 5000), expires).signed_by(alice),
            )
            self.submit("alice posts 30.00 of it (20.00 returns)", b.escrow_post(eid, 3000).signed_by(alice))

        def redeem() -> None:
            self.submit(
                "bob redeems 100.00 USD at BANK-A",
                b.redeem(bob_id, usd, 10000, f"pay-{self.run_id}").signed_by(bob),
            )

        def kill_and_continue() -> str:
            pid = c.kill(KILLED)
            print(f"   {KILLED} (pid {pid}) killed with SIGKILL")
            for i in range(3):
                self.submit(
                    f"alice pays bob 1.00 USD (#{i + 1}, {KILLED} down)",
                    b.transfer([LegSpec(alice_id, bob_id, usd, 100)]).signed_by(alice),
                )
            return "3 of 4 nodes (2f+1) keep committing"

        def restart_and_catch_up() -> str:
            pid = c.restart(KILLED)
            print(f"   {KILLED} restarted (pid {pid})")
            self.submit(
                "bob pays alice 0.50 USD", b.transfer([LegSpec(bob_id, alice_id, usd, 50)]).signed_by(bob)
            )
            return self._wait_caught_up()

        self.step("open client accounts at two banks", open_accounts)
        self.step("mint against deposit references", mint)
        self.step("transfer", transfer)
        self.step("atomic PvP between USD and EUR", pvp)
        self.step("escrow: create, then post part", escrow)
        self.step("redeem back to a deposit", redeem)
        self.step(f"SIGKILL {KILLED} and keep transacting", kill_and_continue)
        self.step(f"restart {KILLED}: it catches up to the same state root", restart_and_catch_up)
        expected = {
            alice_id: {usd: 100000 - 12550 - 20000 - 3000 - 300 + 50, eur: 18000},
            bob_id: {usd: 12550 + 20000 + 3000 - 10000 + 300 - 50, eur: 90000 - 18000},
        }
        owners = {alice_id: alice, bob_id: bob}
        self.step("balances and supply, identical on every node", lambda: self._check_state(expected, owners))
        self.step("reads need the owner's or its bank's key", lambda: self._check_refused(bob_id, alice, op))

    def _up(self) -> str:
        started = self.consortium.up(4, insecure=self.insecure)
        nodes = ", ".join(
            f"{m.member_id}@{m.api_address}"
            for m in self.consortium.genesis().members
            if m.member_id in started
        )
        if self.consortium.insecure:
            return f"{nodes} (PLAINTEXT, --insecure: debugging only)"
        return f"{nodes} (TLS; mutual TLS between nodes, each bank its own CA in genesis)"

    def _statuses(self) -> list[NodeStatusInfo]:
        assert self.client is not None
        out = []
        for endpoint, s in self.client.statuses(timeout_s=2.0).items():
            if isinstance(s, str):
                raise DemoFailed(f"{endpoint} does not answer: {s}")
            out.append(s)
        return out

    def _wait_caught_up(self) -> str:
        deadline = time.monotonic() + CATCH_UP_S
        while True:
            try:
                statuses = self._statuses()
            except DemoFailed:
                statuses = []
            if statuses and len({(s.last_executed, s.state_root) for s in statuses}) == 1:
                table(
                    ["bank", "height", "state root"],
                    [[s.member_id, s.last_executed, s.state_root.hex()] for s in statuses],
                )
                return f"all 4 nodes at height {statuses[0].last_executed} with one state root"
            if time.monotonic() > deadline:
                rows = [[s.member_id, s.last_executed, s.state_root.hex()[:16]] for s in statuses]
                raise DemoFailed(f"nodes did not converge within {CATCH_UP_S:.0f}s: {rows}")
            time.sleep(0.2)  # polling remote status: there is no event to await across processes

    def _check_refused(self, account_id: str, other_client: SigningKey, op: dict[str, SigningKey]) -> str:
        """Another client's key and another bank's operator may not read the account."""
        assert self.client is not None
        for who, key in (("alice's key", other_client), ("BANK-A's operator key", op["BANK-A"])):
            try:
                self.client.account(account_id, as_key=key)
            except NotAuthorized as exc:
                print(f"   {who} reading {account_id}: refused ({str(exc)[:140]}...)")
                continue
            raise DemoFailed(f"{who} read {account_id}, which is not its account")
        self.client.account(account_id, as_key=op["BANK-B"])
        return f"{account_id} is readable by its owner and BANK-B's operator only"

    def _check_state(self, expected: dict[str, dict[str, int]], owners: dict[str, SigningKey]) -> str:
        assert self.client is not None
        genesis = self.client.genesis
        print()
        print_accounts([self.client.account(a, as_key=owners[a]) for a in expected], genesis, as_json=False)
        print()
        supply = self.client.supply()
        print_supply(supply, as_json=False)
        for endpoint in self.client.endpoints:  # every node, one at a time: they must agree
            with LedgerClient(
                genesis,
                [endpoint],
                timeout_s=5.0,
                reader=self.client.reader,
                insecure=self.consortium.insecure,
            ) as one:
                for account_id, balances in expected.items():
                    acc = one.account(account_id, as_key=owners[account_id])
                    got = {a: acc.balance(a).available_minor for a in balances}
                    if got != balances or any(b.held_minor for b in acc.balances):
                        raise DemoFailed(f"{endpoint}: {account_id} has {got}, expected {balances}")
                per_asset = {s.asset: s.outstanding_minor for s in one.supply().assets}
                if per_asset != {s.asset: s.outstanding_minor for s in supply.assets}:
                    raise DemoFailed(f"{endpoint}: supply differs: {per_asset}")
        usd = {s.asset: s for s in supply.assets}["USD.BANK-A"]
        minted_before, redeemed_before = self.supply_before.get("USD.BANK-A", (0, 0))
        moved = (usd.minted_minor - minted_before, usd.redeemed_minor - redeemed_before)
        if moved != (100000, 10000):
            raise DemoFailed(f"USD.BANK-A minted/redeemed moved by {moved}, expected 1000.00 and 100.00")
        for s in supply.assets:
            if s.outstanding_minor != s.minted_minor - s.redeemed_minor:
                raise DemoFailed(f"{s.asset}: outstanding {s.outstanding_minor} != minted - redeemed")
        return "balances as expected on all 4 nodes; outstanding = minted - redeemed"

    def close(self) -> list[str]:
        if self.client is not None:
            self.client.close()
        return self.consortium.down()


def run_demo(directory: Path, insecure: bool = False) -> int:
    """Run the whole demo in ``directory``; stop every node it started; 0 on success."""
    demo = Demo(Path(directory), insecure)
    failed: str | None = None
    try:
        demo.run()
    except (DemoFailed, ConsortiumError) as exc:
        failed = str(exc)
    except Exception as exc:  # a demo reports every failure as a failed step, never a bare traceback
        failed = f"{type(exc).__name__}: {exc}"
    finally:
        print("\n== stop every node")
        for line in demo.close():
            print(f"   {line}")
    if failed:
        print(f"\nDEMO FAILED at step {demo.steps}: {failed}", file=sys.stderr)
        return 1
    print(f"\nDEMO OK: {demo.steps} steps")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, default=Path("consortium-demo"), help="consortium directory")
    parser.add_argument("--insecure", action="store_true", help="plaintext nodes (debugging only)")
    args = parser.parse_args(argv)
    return run_demo(args.dir, args.insecure)


if __name__ == "__main__":
    sys.exit(main())
