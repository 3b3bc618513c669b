"""ledgerctl's argument parser: every command, its arguments and the documented exit codes."""

from __future__ import annotations

import argparse

from client.cli_history import add_commands as add_history_commands
from client.console import add_command as add_console_command

DESCRIPTION = "Operate accounts and move tokenized deposits on a Consortium Ledger."

EXIT_CODES_HELP = """exit codes:
  0  success (transaction committed with result OK, or query answered)
  1  committed, but the ledger refused it (result such as INSUFFICIENT_FUNDS)
  2  bad usage or input (amount, asset, key label, file)
  3  not found (account, transaction, block)
  4  no confirmation in time or no node reachable: may still commit; resubmitting is safe
  5  nodes answered but nothing verified against the genesis keys (lying node?)
  6  rejected by the nodes' checks before consensus (bad signature, wrong chain, ...)
  7  the nodes refused the read: no key at hand may read it (an account: its owner's key
     or its bank's operator key, from --wallet or DIR/keys)

examples:
  ledgerctl --dir consortium keys new alice
  ledgerctl --dir consortium account open alice --bank BANK-A --owner alice
  ledgerctl --dir consortium mint 125.50 USD.BANK-A --to alice --ref dep-001
  ledgerctl --dir consortium transfer alice bob 25.00 USD.BANK-A
  ledgerctl --dir consortium pvp alice bob 100.00 USD.BANK-A 90.00 EUR.BANK-B
  ledgerctl --dir consortium --json balance alice bob
  ledgerctl --dir consortium history alice --from 2026-12-01 --csv
  ledgerctl --dir consortium statement alice --from 2026-12-01 --to 2026-12-02
  ledgerctl --dir consortium feed --issuer BANK-A --sqlite bank-a.sqlite
  ledgerctl --dir consortium console --as BANK-A --listen 127.0.0.1:8470
"""


def _tx_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--memo", default="", help="free text stored with the transaction")
    p.add_argument("--key", action="append", metavar="LABEL", help="sign with this wallet key (repeatable)")
    p.add_argument(
        "--out", metavar="FILE", help="write the (partly) signed envelope to FILE instead of submitting"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ledgerctl",
        description=DESCRIPTION,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--dir", help="consortium directory: genesis.json, keys/ (default $LEDGER_DIR or ./consortium)"
    )
    p.add_argument("--genesis", help="genesis file (default DIR/genesis.json)")
    p.add_argument(
        "--node", action="append", metavar="HOST:PORT", help="node API address (repeatable; default all)"
    )
    p.add_argument("--wallet", help="wallet directory for client keys (default DIR/wallet)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="deadline of each command")
    p.add_argument("--json", action="store_true", help="print one JSON document (for scripts)")
    p.add_argument(
        "--insecure", action="store_true", help="plaintext to the nodes (debugging only; default TLS)"
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    keys = sub.add_parser("keys", help="create and list signing keys").add_subparsers(
        dest="keys_cmd", required=True
    )
    keys.add_parser("new", help="generate a key").add_argument("label")
    keys.add_parser("list", help="list keys (wallet and DIR/keys)")

    acc = sub.add_parser("account", help="open, freeze, unfreeze or show an account")
    acc_sub = acc.add_subparsers(dest="account_cmd", required=True)
    o = acc_sub.add_parser("open", help="open an account at a bank (signed by the bank's operator)")
    o.add_argument("account")
    o.add_argument("--bank", required=True, help="member id, e.g. BANK-A")
    o.add_argument("--owner", required=True, help="owner's key label or 64-hex public key")
    _tx_opts(o)
    for name in ("freeze", "unfreeze"):
        f = acc_sub.add_parser(name, help=f"{name} an account (signed by its bank's operator)")
        f.add_argument("account")
        _tx_opts(f)
    show = acc_sub.add_parser("show", help="same as balance")
    show.add_argument("accounts", nargs="+")
    show.add_argument("--confirmations", type=int, default=1, metavar="N", help="need N nodes to agree")

    m = sub.add_parser("mint", help="issue tokens against a deposit (issuer's operator signs)")
    m.add_argument("amount", help="decimal, e.g. 125.50")
    m.add_argument("asset", help="e.g. USD.BANK-A")
    m.add_argument("--to", required=True, metavar="ACCOUNT")
    m.add_argument("--ref", required=True, help="deposit reference, unique per issuer")
    _tx_opts(m)

    t = sub.add_parser("transfer", help="move tokens; several legs settle all or nothing")
    t.add_argument("leg0", nargs="*", metavar="FROM TO AMOUNT ASSET")
    t.add_argument(
        "--leg", action="append", nargs=4, metavar=("FROM", "TO", "AMOUNT", "ASSET"), help="another leg"
    )
    _tx_opts(t)

    v = sub.add_parser("pvp", help="A pays B one asset, B pays A another, atomically (both owners sign)")
    for name in ("a", "b", "pay_amount", "pay_asset", "get_amount", "get_asset"):
        v.add_argument(name)
    _tx_opts(v)

    r = sub.add_parser("redeem", help="burn tokens back to a deposit (the owner signs)")
    r.add_argument("account")
    r.add_argument("amount")
    r.add_argument("asset")
    r.add_argument("--ref", required=True, help="payout reference, unique per issuer")
    _tx_opts(r)

    e = sub.add_parser("escrow", help="two-phase transfer: create, post, void").add_subparsers(
        dest="escrow_cmd", required=True
    )
    ec = e.add_parser("create", help="hold funds for a payee (payer signs)")
    for name in ("escrow", "frm", "to", "amount", "asset"):
        ec.add_argument(name)
    ec.add_argument("--expires-in", type=int, default=3600, metavar="SECONDS", help="default 3600")
    _tx_opts(ec)
    ep = e.add_parser("post", help="release (part of) the held funds to the payee (payer signs)")
    for name in ("escrow", "amount", "asset"):
        ep.add_argument(name)
    ep.add_argument("--by", required=True, metavar="ACCOUNT", help="the payer account, whose owner signs")
    _tx_opts(ep)
    ev = e.add_parser("void", help="return the held funds to the payer (payer or payee signs)")
    ev.add_argument("escrow")
    ev.add_argument(
        "--by", required=True, metavar="ACCOUNT", help="payer or payee account, whose owner signs"
    )
    _tx_opts(ev)

    bal = sub.add_parser("balance", help="balances of accounts")
    bal.add_argument("accounts", nargs="+")
    bal.add_argument(
        "--proof",
        action="store_true",
        help="as of the latest stable checkpoint, with a Merkle proof verified against genesis alone",
    )
    bal.add_argument(
        "--out", metavar="FILE", help="with --proof and one account: save the proof (ledgerctl verify FILE)"
    )
    bal.add_argument(
        "--confirmations",
        type=int,
        default=1,
        metavar="N",
        help="need N nodes to agree (f+1 outvotes a liar)",
    )
    sub.add_parser("tx", help="a committed transaction, verified").add_argument("tx_id")
    sub.add_parser("block", help="a certified block, verified").add_argument("height", type=int)
    sub.add_parser("status", help="every node's view, height and state root")
    sub.add_parser("supply", help="minted, redeemed and outstanding per asset")
    ver = sub.add_parser(
        "verify",
        help="check a saved balance proof offline (balance --proof --out FILE), against genesis alone",
    )
    ver.add_argument("file")
    sign = sub.add_parser("sign", help="add your signature to an envelope file (multi-party transfers)")
    sign.add_argument("file")
    sign.add_argument("--key", action="append", metavar="LABEL")
    submit = sub.add_parser(
        "submit",
        help="submit envelope files and wait for their receipts",
        description="Submit signed envelope files (see --out and `sign`) and wait for their verified "
        "receipts. Several files go to one node at once, on one stream; the exit code is then the "
        "most pressing of their outcomes: 4, then 6, then 1; with --json, a list of one document "
        "per file.",
    )
    submit.add_argument("files", nargs="+", metavar="FILE", help="an envelope file")
    add_history_commands(sub)  # history, statement, feed (client/cli_history.py)
    add_console_command(sub)  # console (client/console.py)
    return p
