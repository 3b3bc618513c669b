"""Client SDK of the Consortium Ledger: build and sign transactions, submit them to any node,
and accept a result only with a receipt verified against the genesis keys.

Example (against a local consortium started with ``scripts/consortium.py up``; tested by
tests/client/test_live.py)::

    from pathlib import Path

    from client import Committed, LedgerClient, LegSpec, Wallet
    from ledger.crypto import load_key

    consortium = Path("consortium")
    bank_a = load_key(consortium / "banks" / "BANK-A" / "BANK-A.operator.key").key
    wallet = Wallet(consortium / "wallet")
    alice, bob = wallet.create("example-alice").key, wallet.create("example-bob").key

    # reader: the key reads are made with (BANK-A's operator may read the accounts it opened).
    with LedgerClient(consortium / "genesis.json", timeout_s=10, reader=bank_a) as ledger:
        for account, owner in (("ex-alice", alice), ("ex-bob", bob)):
            tx = ledger.tx.open_account("BANK-A", account, owner.public_key).signed_by(bank_a)
            print(ledger.submit(tx))
        print(ledger.submit(ledger.tx.mint("USD.BANK-A", "ex-alice", 12550, "ex-dep-1").signed_by(bank_a)))
        pay = ledger.tx.transfer([LegSpec("ex-alice", "ex-bob", "USD.BANK-A", 2500)]).signed_by(alice)
        outcome = ledger.submit(pay)
        if isinstance(outcome, Committed):  # definite, receipt verified against genesis keys
            print(outcome.code_name, "at height", outcome.height)
        else:  # Rejected (invalid envelope) or Indefinite (resubmitting `pay` is safe)
            print("not confirmed:", outcome)
        print(ledger.account("ex-bob").balance("USD.BANK-A"))

Modules: amounts (decimal text <-> minor units), wallet (key files), tx (builders, signing),
verify (certificates, attestations, Merkle proofs), core (the client's decisions, sans-I/O),
sdk (LedgerClient) and aio (AsyncLedgerClient) over it, cli (ledgerctl).
"""

from client.amounts import AmountError, format_amount, format_money, parse_amount, parse_money
from client.models import (
    AccountInfo,
    Committed,
    Indefinite,
    LedgerError,
    NotAuthorized,
    NotFound,
    Outcome,
    Pending,
    Rejected,
    Supply,
    Unreachable,
    Unverified,
)
from client.sdk import LedgerClient
from client.tx import LegSpec, Transaction, TxBuilder, TxBuildError
from client.verify import ReceiptError, VerificationCache, VerifiedReceipt, verify_receipt
from client.wallet import Wallet, WalletError

__all__ = [
    "AccountInfo",
    "AmountError",
    "Committed",
    "Indefinite",
    "LedgerClient",
    "LedgerError",
    "LegSpec",
    "NotAuthorized",
    "NotFound",
    "Outcome",
    "Pending",
    "ReceiptError",
    "Rejected",
    "Supply",
    "Transaction",
    "TxBuildError",
    "TxBuilder",
    "Unreachable",
    "Unverified",
    "VerificationCache",
    "VerifiedReceipt",
    "Wallet",
    "WalletError",
    "format_amount",
    "format_money",
    "parse_amount",
    "parse_money",
    "verify_receipt",
]
