"""ledgerctl: operate accounts and move tokenized deposits from the command line.

Amounts are written and shown in decimal with the asset's scale ("125.50 USD.BANK-A" is two
arguments, 125.50 and USD.BANK-A) and converted exactly to minor units. Signing keys are found
by public key in the wallet (--wallet, default DIR/wallet) and in DIR/keys (bank operator keys
of a local consortium), so `ledgerctl mint 100.00 USD.BANK-A --to alice --ref dep-1` signs with
BANK-A's operator key and a transfer signs with the debited owners' keys, without naming them.
Every receipt is verified against the genesis keys before it is shown as committed.

Reads need a key too (docs/ARCHITECTURE.md, "Who may read"), found the same way: `balance ACCOUNT`
reads with the owner's key if the wallet has it (a key labelled like the account first), else
with its bank's operator key from DIR/keys; `supply`, `block` and `tx` read with an operator key
from DIR/keys if there is one, else with the wallet's keys.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from client import cli_history, console
from client import cli_output as out
from client.amounts import AmountError, find_asset, parse_amount
from client.cli_parser import build_parser
from client.history import StatementMismatch
from client.models import (
    AccountInfo,
    Committed,
    Indefinite,
    LedgerError,
    NotAuthorized,
    NotFound,
    Outcome,
    Rejected,
    Unreachable,
    Unverified,
)
from client.proofs import verify_balance_proof
from client.sdk import LedgerClient
from client.tx import LegSpec, Transaction, TxBuildError, debited_accounts
from client.verify import ReceiptError
from client.wallet import Wallet, WalletError
from ledger.crypto import SigningKey
from ledger.genesis import Genesis, GenesisError, load_genesis
from ledger.statetree import ProofError
from ledger.tls import TlsError

EXIT_OK = 0
EXIT_REFUSED = 1  # committed, but the ledger's result is not OK (e.g. INSUFFICIENT_FUNDS)
EXIT_USAGE = 2  # bad arguments or input: amount, asset, key, file
EXIT_NOT_FOUND = 3  # unknown account, transaction or block
EXIT_INDEFINITE = 4  # no node confirmed in time: may still commit, resubmitting is safe
EXIT_UNVERIFIED = 5  # nodes answered, but no answer verified against the genesis keys
EXIT_REJECTED = 6  # the nodes' stateless checks refused the envelope (never admitted)
EXIT_NOT_AUTHORIZED = 7  # the nodes refused the read: no key at hand may read it

T = TypeVar("T")


class CliError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Context:
    """Genesis, endpoints and wallets from the global flags; the client is made on first use."""

    def __init__(self, args: argparse.Namespace) -> None:
        base = Path(args.dir or os.environ.get("LEDGER_DIR", "consortium"))
        genesis_path = Path(args.genesis) if args.genesis else base / "genesis.json"
        try:
            self.genesis: Genesis = load_genesis(genesis_path)
        except GenesisError as exc:
            raise CliError(EXIT_USAGE, f"{exc} (use --dir CONSORTIUM_DIR or --genesis FILE)") from exc
        self.endpoints: list[str] | None = args.node or None
        self.wallet = Wallet(Path(args.wallet) if args.wallet else base / "wallet")
        # a local consortium keeps each bank's keys in its own folder (scripts/consortium.py)
        banks = sorted(p for p in (base / "banks").glob("*") if p.is_dir())
        self.key_wallets = [self.wallet, Wallet(base / "keys"), *(Wallet(p) for p in banks)]
        self.insecure: bool = args.insecure
        self.timeout_s: float = args.timeout
        self.as_json: bool = args.json
        self._client: LedgerClient | None = None

    @property
    def client(self) -> LedgerClient:
        if self._client is None:
            self._client = LedgerClient(
                self.genesis,
                self.endpoints,
                timeout_s=self.timeout_s,
                call_timeout_s=min(2.0, self.timeout_s),
                insecure=self.insecure,
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def key_by_label(self, label: str) -> SigningKey:
        for w in self.key_wallets:
            try:
                return w.load(label).key
            except WalletError:
                continue
        dirs = ", ".join(str(w.directory) for w in self.key_wallets)
        raise CliError(EXIT_USAGE, f"no key labelled {label!r} in {dirs} (see `ledgerctl keys list`)")

    def key_by_public(self, public_key: bytes) -> SigningKey | None:
        for w in self.key_wallets:
            found = w.find_public(public_key)
            if found is not None:
                return found.key
        return None

    def _keys(self) -> list[tuple[str, SigningKey]]:
        return [(k.label, k.key) for w in self.key_wallets for k in w.key_files()]

    def read_with(self, what: str, read: Callable[[SigningKey], T], keys: Sequence[SigningKey]) -> T:
        """``read`` with the first of ``keys`` the nodes let read it (NotAuthorized: the next)."""
        refused: NotAuthorized | None = None
        for key in keys:
            try:
                return read(key)
            except NotAuthorized as exc:
                refused = exc
        if refused is None:
            dirs = ", ".join(str(w.directory) for w in self.key_wallets)
            raise CliError(EXIT_NOT_AUTHORIZED, f"{what}: reads need a key, and there is none in {dirs}")
        raise refused

    def operator_first(self) -> list[SigningKey]:
        """Members' operator keys at hand (they may read supply, whole blocks, any transaction),
        then the others."""
        operators = {m.operator_key for m in self.genesis.members}
        keys = [k for _, k in self._keys()]
        return [k for k in keys if k.public_key in operators] + [
            k for k in keys if k.public_key not in operators
        ]

    def account_read_keys(self, account_id: str) -> list[SigningKey]:
        """The keys to read an account with, in order: its owner's if the wallets have it (a key
        labelled like the account first), then the other clients', then operator keys (its
        bank's among them): the owner is not known before the read."""
        operators = {m.operator_key for m in self.genesis.members}
        keys = self._keys()
        owners = [k for label, k in keys if label == account_id and k.public_key not in operators]
        owners += [k for label, k in keys if label != account_id and k.public_key not in operators]
        return owners + [k for _, k in keys if k.public_key in operators]

    def account(self, account_id: str, confirmations: int = 1) -> AccountInfo:
        """Read an account with the first of account_read_keys the nodes let read it."""
        return self.read_with(
            f"account {account_id!r}",
            lambda key: self.client.account(account_id, confirmations=confirmations, as_key=key),
            self.account_read_keys(account_id),
        )

    def money(self, amount: str, asset_name: str) -> tuple[str, int]:
        asset = find_asset(self.genesis, asset_name)
        return asset.asset, parse_amount(amount, asset.scale, self.genesis.limits.amount_max)


# --- signing ---------------------------------------------------------------------------------


def _required_keys(ctx: Context, tx: Transaction) -> list[tuple[str, bytes]]:
    """(who, public key) of every signer the ledger will require for this transaction."""
    body = tx.decoded_body()
    kind = body.WhichOneof("op")
    g = ctx.genesis
    if kind == "open_account":
        member = g.member(body.open_account.member_id)
        if member is None:
            raise CliError(EXIT_USAGE, f"unknown bank {body.open_account.member_id!r}")
        return [(f"operator of {member.member_id}", member.operator_key)]
    if kind == "mint":
        issuer = g.member(find_asset(g, body.mint.asset).issuer)
        assert issuer is not None  # genesis ties every asset to a member
        return [(f"operator of {issuer.member_id}", issuer.operator_key)]
    if kind == "set_frozen":
        bank = g.member(ctx.account(body.set_frozen.account_id).member_id)
        if bank is None:
            raise CliError(EXIT_USAGE, "the account's bank is not in genesis")
        return [(f"operator of {bank.member_id}", bank.operator_key)]
    return [(f"owner of {a}", ctx.account(a).owner_key) for a in debited_accounts(body)]


def _sign(ctx: Context, tx: Transaction, labels: Sequence[str], partial: bool) -> Transaction:
    """Sign with --key labels if given, else with every required key the wallets hold."""
    if labels:
        return tx.signed_by(*(ctx.key_by_label(label) for label in labels))
    missing = []
    for who, public_key in _required_keys(ctx, tx):
        key = ctx.key_by_public(public_key)
        if key is None:
            missing.append(who)
        else:
            tx = tx.signed_by(key)
    if missing and not partial:
        raise CliError(
            EXIT_USAGE,
            f"no key for the {', '.join(missing)} in the wallet; pass --key LABEL, or write the "
            "partly signed envelope with --out FILE and have the other party run `ledgerctl sign FILE`",
        )
    return tx


def _finish_tx(ctx: Context, args: argparse.Namespace, tx: Transaction) -> int:
    tx = _sign(ctx, tx, args.key or [], partial=bool(args.out))
    if args.out:
        Path(args.out).write_bytes(tx.envelope_bytes())
        print(f"wrote envelope {tx.tx_id.hex()} with {len(tx.signatures)} signature(s) to {args.out}")
        return EXIT_OK
    return _submit(ctx, tx)


def _submit(ctx: Context, tx: Transaction) -> int:
    outcome = ctx.client.submit(tx)
    out.print_outcome(outcome, ctx.as_json)
    return _exit_code(outcome)


# Several outcomes exit with the most pressing code: a transaction that may still commit (4),
# then one the nodes refused to admit (6), then one the ledger refused (1).
_EXIT_PRIORITY = (EXIT_OK, EXIT_REFUSED, EXIT_REJECTED, EXIT_INDEFINITE)


def _exit_code(outcome: Outcome) -> int:
    if isinstance(outcome, Committed):
        return EXIT_OK if outcome.ok else EXIT_REFUSED
    if isinstance(outcome, Rejected):
        return EXIT_REJECTED
    assert isinstance(outcome, Indefinite)
    return EXIT_INDEFINITE


# --- commands --------------------------------------------------------------------------------


def cmd_keys(ctx: Context, args: argparse.Namespace) -> int:
    if args.keys_cmd == "new":
        k = ctx.wallet.create(args.label)
        if ctx.as_json:
            out.emit_json({"label": k.label, "public_key": k.public_key.hex()})
        else:
            print(f"created key {k.label} in {ctx.wallet.directory}: {k.public_key.hex()}")
        return EXIT_OK
    rows = [(k.label, k.public_key.hex(), str(w.directory)) for w in ctx.key_wallets for k in w.key_files()]
    if ctx.as_json:
        out.emit_json([{"label": r[0], "public_key": r[1], "dir": r[2]} for r in rows])
    else:
        out.table(["label", "public key", "directory"], rows)
    return EXIT_OK


def _owner_key(ctx: Context, owner: str) -> bytes:
    if len(owner) == 64:
        try:
            return bytes.fromhex(owner)
        except ValueError:
            pass
    for w in ctx.key_wallets:
        try:
            return w.load(owner).public_key
        except WalletError:
            continue
    raise CliError(
        EXIT_USAGE, f"--owner {owner!r} is neither a key label in the wallet nor a 64-hex public key"
    )


def cmd_account(ctx: Context, args: argparse.Namespace) -> int:
    b = ctx.client.tx
    if args.account_cmd == "open":
        tx = b.open_account(args.bank, args.account, _owner_key(ctx, args.owner), memo=args.memo)
    elif args.account_cmd in ("freeze", "unfreeze"):
        tx = b.set_frozen(args.account, args.account_cmd == "freeze", memo=args.memo)
    else:
        return cmd_balance(ctx, args)
    return _finish_tx(ctx, args, tx)


def cmd_mint(ctx: Context, args: argparse.Namespace) -> int:
    asset, minor = ctx.money(args.amount, args.asset)
    return _finish_tx(ctx, args, ctx.client.tx.mint(asset, args.to, minor, args.ref, memo=args.memo))


def cmd_transfer(ctx: Context, args: argparse.Namespace) -> int:
    raw_legs = ([args.leg0] if args.leg0 else []) + (args.leg or [])
    if not raw_legs:
        raise CliError(
            EXIT_USAGE, "give a leg: FROM TO AMOUNT ASSET (and --leg FROM TO AMOUNT ASSET for more)"
        )
    legs = []
    for frm, to, amount, asset_name in raw_legs:
        asset, minor = ctx.money(amount, asset_name)
        legs.append(LegSpec(frm, to, asset, minor))
    return _finish_tx(ctx, args, ctx.client.tx.transfer(legs, memo=args.memo))


def cmd_pvp(ctx: Context, args: argparse.Namespace) -> int:
    pay_asset, pay_minor = ctx.money(args.pay_amount, args.pay_asset)
    get_asset, get_minor = ctx.money(args.get_amount, args.get_asset)
    tx = ctx.client.tx.pvp(
        LegSpec(args.a, args.b, pay_asset, pay_minor),
        LegSpec(args.b, args.a, get_asset, get_minor),
        memo=args.memo,
    )
    return _finish_tx(ctx, args, tx)


def cmd_redeem(ctx: Context, args: argparse.Namespace) -> int:
    asset, minor = ctx.money(args.amount, args.asset)
    return _finish_tx(ctx, args, ctx.client.tx.redeem(args.account, asset, minor, args.ref, memo=args.memo))


def cmd_escrow(ctx: Context, args: argparse.Namespace) -> int:
    b = ctx.client.tx
    if args.escrow_cmd == "create":
        asset, minor = ctx.money(args.amount, args.asset)
        if not 0 < args.expires_in <= ctx.genesis.limits.escrow_duration_ms_max // 1000:
            raise CliError(
                EXIT_USAGE, "--expires-in must be a positive number of seconds within the ledger limit"
            )
        expires_ms = int(time.time() * 1000) + args.expires_in * 1000
        tx = b.escrow_create(
            args.escrow, LegSpec(args.frm, args.to, asset, minor), expires_ms, memo=args.memo
        )
        return _finish_tx(ctx, args, tx)
    if args.escrow_cmd == "post":
        asset, minor = ctx.money(args.amount, args.asset)
        tx = b.escrow_post(args.escrow, minor, memo=args.memo)
    else:
        tx = b.escrow_void(args.escrow, memo=args.memo)
    # The body names only the escrow id: the signer is the owner of the --by account.
    if not args.key:
        owner = ctx.account(args.by).owner_key
        key = ctx.key_by_public(owner)
        if key is None:
            raise CliError(EXIT_USAGE, f"no key for the owner of {args.by} in the wallet; pass --key LABEL")
        tx = tx.signed_by(key)
    return _finish_tx(ctx, args, tx)


def cmd_balance(ctx: Context, args: argparse.Namespace) -> int:
    if args.proof:
        return _balance_proofs(ctx, args)
    if args.out:
        raise CliError(EXIT_USAGE, "--out saves a proof: use it with --proof")
    if not 1 <= args.confirmations <= len(ctx.client.endpoints):
        raise CliError(EXIT_USAGE, f"--confirmations must be 1..{len(ctx.client.endpoints)}")
    accounts = [ctx.account(a, args.confirmations) for a in args.accounts]
    out.print_accounts(accounts, ctx.genesis, ctx.as_json)
    return EXIT_OK


def _balance_proofs(ctx: Context, args: argparse.Namespace) -> int:
    if args.out and len(args.accounts) != 1:
        raise CliError(EXIT_USAGE, "--out saves the proof of one account")
    proven = []
    for account_id in args.accounts:
        verified, raw = ctx.read_with(
            f"account {account_id!r}",
            lambda key, a=account_id: ctx.client.balance_proof(a, as_key=key),  # type: ignore[misc]
            ctx.account_read_keys(account_id),
        )
        if args.out:
            Path(args.out).write_bytes(raw)
        proven.append(verified)
    out.print_proven(proven, ctx.genesis, ctx.as_json)
    return EXIT_OK


def cmd_verify(ctx: Context, args: argparse.Namespace) -> int:
    try:
        raw = Path(args.file).read_bytes()
    except OSError as exc:
        raise CliError(EXIT_USAGE, f"cannot read {args.file}: {exc}") from exc
    try:
        verified = verify_balance_proof(ctx.genesis, raw)
    except ProofError as exc:
        raise CliError(EXIT_UNVERIFIED, f"{args.file}: the proof does not verify: {exc}") from exc
    out.print_proven([verified], ctx.genesis, ctx.as_json)
    return EXIT_OK


def _tx_id(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise CliError(EXIT_USAGE, f"{text!r} is not a transaction id (64 hex characters)")
    return raw


def cmd_tx(ctx: Context, args: argparse.Namespace) -> int:
    tx_id = _tx_id(args.tx_id)
    info = ctx.read_with(
        f"transaction {tx_id.hex()}",
        lambda key: ctx.client.transaction(tx_id, as_key=key),
        ctx.operator_first(),
    )
    out.print_outcome(info.committed, ctx.as_json)
    if info.transaction is not None and not ctx.as_json:
        print(
            f"  body    {info.transaction.decoded_body().WhichOneof('op')}, {len(info.transaction.signatures)} signature(s)"
        )
    return EXIT_OK if info.committed.ok else EXIT_REFUSED


def cmd_block(ctx: Context, args: argparse.Namespace) -> int:
    if args.height < 1:
        raise CliError(EXIT_USAGE, "block heights start at 1")
    block = ctx.read_with(
        f"block {args.height}", lambda key: ctx.client.block(args.height, as_key=key), ctx.operator_first()
    )
    out.print_block(block, ctx.as_json)
    return EXIT_OK


def cmd_status(ctx: Context, args: argparse.Namespace) -> int:
    statuses = ctx.client.statuses()
    out.print_statuses(statuses, ctx.as_json)
    return EXIT_OK if any(not isinstance(s, str) for s in statuses.values()) else EXIT_INDEFINITE


def cmd_supply(ctx: Context, args: argparse.Namespace) -> int:
    supply = ctx.read_with("supply", lambda key: ctx.client.supply(as_key=key), ctx.operator_first())
    out.print_supply(supply, ctx.as_json)
    return EXIT_OK


def _read_envelope(ctx: Context, path: str) -> Transaction:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise CliError(EXIT_USAGE, f"{path}: {exc.strerror}") from exc
    return Transaction.from_envelope(ctx.genesis.chain_id, raw, tx_bytes_max=ctx.genesis.limits.tx_bytes_max)


def cmd_sign(ctx: Context, args: argparse.Namespace) -> int:
    tx = _read_envelope(ctx, args.file)
    tx = _sign(ctx, tx, args.key or [], partial=True)
    Path(args.file).write_bytes(tx.envelope_bytes())
    print(f"envelope {tx.tx_id.hex()} now has {len(tx.signatures)} signature(s)")
    return EXIT_OK


def cmd_submit(ctx: Context, args: argparse.Namespace) -> int:
    txs = [_read_envelope(ctx, path) for path in args.files]
    if len(txs) == 1:
        return _submit(ctx, txs[0])
    outcomes = ctx.client.submit_many(txs)
    if ctx.as_json:
        out.emit_json(
            [{"file": path, **out.outcome_doc(o)} for path, o in zip(args.files, outcomes, strict=True)]
        )
    else:
        for path, outcome in zip(args.files, outcomes, strict=True):
            print(f"{path}: ", end="")
            out.print_outcome(outcome, False)
    return max((_exit_code(o) for o in outcomes), key=_EXIT_PRIORITY.index)


COMMANDS = {
    "keys": cmd_keys,
    "account": cmd_account,
    "mint": cmd_mint,
    "transfer": cmd_transfer,
    "pvp": cmd_pvp,
    "redeem": cmd_redeem,
    "escrow": cmd_escrow,
    "balance": cmd_balance,
    "tx": cmd_tx,
    "block": cmd_block,
    "status": cmd_status,
    "supply": cmd_supply,
    "verify": cmd_verify,
    "sign": cmd_sign,
    "submit": cmd_submit,
    "history": cli_history.cmd_history,
    "statement": cli_history.cmd_statement,
    "feed": cli_history.cmd_feed,
    "console": console.cmd_console,
}


def run(argv: Sequence[str] | None = None) -> int:
    """Parse and run one command; return its exit code (errors printed, never raised)."""
    args = build_parser().parse_args(argv)
    if args.cmd == "transfer" and args.leg0 and len(args.leg0) != 4:
        print("ledgerctl: error: a leg is FROM TO AMOUNT ASSET (4 arguments)", file=sys.stderr)
        return EXIT_USAGE
    ctx: Context | None = None
    try:
        ctx = Context(args)
        return COMMANDS[args.cmd](ctx, args)
    except CliError as exc:
        code, message = exc.code, str(exc)
    except (
        AmountError,
        TxBuildError,
        WalletError,
        TlsError,
        cli_history.UsageError,
        console.ConsoleError,
    ) as exc:
        code, message = EXIT_USAGE, str(exc)
    except NotFound as exc:
        code, message = EXIT_NOT_FOUND, str(exc)
    except NotAuthorized as exc:
        code, message = EXIT_NOT_AUTHORIZED, f"{exc}; reads need the owner's key or its bank's operator key"
    except Unreachable as exc:
        code, message = (
            EXIT_INDEFINITE,
            f"{exc}; are the nodes running? (--node HOST:PORT, `ledgerctl status`)",
        )
    except (Unverified, ReceiptError, StatementMismatch) as exc:
        code, message = EXIT_UNVERIFIED, str(exc)
    except LedgerError as exc:
        code, message = EXIT_INDEFINITE, str(exc)
    finally:
        if ctx is not None:
            ctx.close()
    print(f"ledgerctl: error: {message}", file=sys.stderr)
    if args.json:  # scripts parse stdout: give them the error as a document too
        out.emit_json({"error": message, "exit_code": code})
    return code


def main() -> None:
    """Console-script entry point (pyproject: ledgerctl = client.cli:main)."""
    try:
        code = run()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_OK
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
