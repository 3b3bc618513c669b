"""ledgerctl history, statement and feed: an account's entries, a reconciled statement, and an
issuer's mints and redeems posted into SQLite from the verified feed (client/feed_sqlite.py).

Times are ISO-8601 (``2026-12-02T06:00:00Z``; no zone: UTC) or integer milliseconds since the
epoch; consensus time is what entries carry. Amounts are shown in decimal with the asset's scale;
JSON and CSV also give minor units (``*_minor``).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from client import cli_output as out
from client.amounts import format_amount
from client.feed_sqlite import IssuerBook
from client.history import KINDS, FeedBlock, HistoryEntry, Statement
from client.sdk import LedgerClient
from ledger.crypto import SigningKey
from ledger.genesis import Genesis

EXIT_OK, EXIT_USAGE = 0, 2


T = TypeVar("T")


class Ctx(Protocol):
    genesis: Genesis
    as_json: bool

    @property
    def client(self) -> LedgerClient: ...

    def read_with(self, what: str, read: Callable[[SigningKey], T], keys: Sequence[SigningKey]) -> T: ...

    def account_read_keys(self, account_id: str) -> list[SigningKey]: ...

    def operator_first(self) -> list[SigningKey]: ...


class UsageError(ValueError):
    """Bad arguments (ledgerctl exits 2)."""


def add_commands(sub: Any) -> None:
    """The three subcommands, on ledgerctl's subparsers."""
    h = sub.add_parser("history", help="an account's entries, newest last")
    h.add_argument("account")
    h.add_argument("--from", dest="from_time", metavar="TIME", help="ISO-8601 or epoch ms (inclusive)")
    h.add_argument("--to", dest="to_time", metavar="TIME", help="ISO-8601 or epoch ms (exclusive)")
    h.add_argument(
        "--kind", action="append", choices=[k.lower() for k in KINDS], help="only these (repeatable)"
    )
    h.add_argument("--limit", type=int, metavar="N", help="only the newest N entries")
    h.add_argument("--csv", action="store_true", help="print CSV")
    _json_flag(h)
    s = sub.add_parser("statement", help="opening and closing balance per asset, and the entries between")
    s.add_argument("account")
    s.add_argument("--from", dest="from_time", required=True, metavar="TIME", help="ISO-8601 or epoch ms")
    s.add_argument("--to", dest="to_time", required=True, metavar="TIME", help="ISO-8601 or epoch ms")
    _json_flag(s)
    f = sub.add_parser(
        "feed",
        help="post an issuer's mints and redeems into SQLite from the verified feed, exactly once",
    )
    f.add_argument("--issuer", required=True, metavar="BANK", help="member id, e.g. BANK-A")
    f.add_argument("--sqlite", required=True, metavar="FILE", help="the book (created if missing)")
    f.add_argument(
        "--until-height", type=int, metavar="H", help="stop once height H is posted (default: follow)"
    )
    _json_flag(f)


def _json_flag(p: argparse.ArgumentParser) -> None:
    # After the command too (`ledgerctl history ACCOUNT --json`); absent, the global flag stands.
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")


def parse_time(text: str | None, what: str) -> int:
    """Epoch ms of ISO-8601 text (naive: UTC) or of an integer; 0 for None."""
    if text is None:
        return 0
    try:
        return int(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise UsageError(f"{what} {text!r} is neither ISO-8601 nor epoch milliseconds") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _scale(genesis: Genesis, asset: str) -> int:
    a = genesis.asset(asset)
    return a.scale if a is not None else 0


def entry_doc(e: HistoryEntry, genesis: Genesis) -> dict[str, Any]:
    scale = _scale(genesis, e.asset)
    doc: dict[str, Any] = {"time": iso(e.time_ms), **e.as_dict()}
    for name in ("delta_available", "delta_held", "available_after", "held_after"):
        minor = doc[name]
        doc[name] = format_amount(minor, scale)
        doc[f"{name}_minor"] = minor
    return doc


_TABLE = (
    "time",
    "height",
    "kind",
    "asset",
    "available",
    "held",
    "available after",
    "held after",
    "counterparty",
    "ref",
)


def _row(e: HistoryEntry, genesis: Genesis) -> list[object]:
    scale = _scale(genesis, e.asset)
    amount = [
        format_amount(x, scale) for x in (e.delta_available, e.delta_held, e.available_after, e.held_after)
    ]
    ref = e.escrow_id or e.tx_id.hex()[:16]
    return [iso(e.time_ms), e.height, e.kind, e.asset, *amount, e.counterparty, ref]


def cmd_history(ctx: Ctx, args: argparse.Namespace) -> int:
    from_ms = parse_time(args.from_time, "--from")
    to_ms = parse_time(args.to_time, "--to")
    if to_ms and to_ms <= from_ms:
        raise UsageError("--to must be after --from")
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be >= 1")

    def read(key: SigningKey) -> list[HistoryEntry]:
        newest = ctx.client.history_entries(
            args.account, from_ms=from_ms, to_ms=to_ms, kinds=tuple(args.kind or ()), as_key=key
        )
        return list(itertools.islice(newest, args.limit))[::-1]  # newest last

    entries = ctx.read_with(f"history of {args.account!r}", read, ctx.account_read_keys(args.account))
    if ctx.as_json:
        out.emit_json([entry_doc(e, ctx.genesis) for e in entries])
    elif args.csv:
        docs = [entry_doc(e, ctx.genesis) for e in entries]
        fields = list(docs[0]) if docs else ["time", *HistoryEntry.__dataclass_fields__]
        writer = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(docs)
    else:
        out.table(_TABLE, [_row(e, ctx.genesis) for e in entries])
    return EXIT_OK


def statement_doc(s: Statement, genesis: Genesis) -> dict[str, Any]:
    def money(asset: str, minor: int) -> str:
        return format_amount(minor, _scale(genesis, asset))

    return {
        "account_id": s.account_id,
        "from": iso(s.from_ms),
        "to": iso(s.to_ms),
        "from_ms": s.from_ms,
        "to_ms": s.to_ms,
        "height": s.height,
        "assets": [
            {
                "asset": a.asset,
                "opening_available": money(a.asset, a.opening_available),
                "opening_held": money(a.asset, a.opening_held),
                "credits": money(a.asset, a.credits),
                "debits": money(a.asset, a.debits),
                "closing_available": money(a.asset, a.closing_available),
                "closing_held": money(a.asset, a.closing_held),
                "opening_available_minor": a.opening_available,
                "opening_held_minor": a.opening_held,
                "closing_available_minor": a.closing_available,
                "closing_held_minor": a.closing_held,
                "entries": a.entries,
            }
            for a in s.assets
        ],
        "entries": [entry_doc(e, genesis) for e in s.entries],
    }


def cmd_statement(ctx: Ctx, args: argparse.Namespace) -> int:
    from_ms = parse_time(args.from_time, "--from")
    to_ms = parse_time(args.to_time, "--to")
    if to_ms <= from_ms:
        raise UsageError("--to must be after --from")
    s = ctx.read_with(
        f"statement of {args.account!r}",
        lambda key: ctx.client.statement(args.account, from_ms, to_ms, as_key=key),
        ctx.account_read_keys(args.account),
    )
    if ctx.as_json:
        out.emit_json(statement_doc(s, ctx.genesis))
        return EXIT_OK
    doc = statement_doc(s, ctx.genesis)
    print(f"statement of {s.account_id} from {doc['from']} to {doc['to']} (node height {s.height})")
    out.table(
        ["asset", "opening", "opening held", "credits", "debits", "closing", "closing held", "entries"],
        [
            [a["asset"], a["opening_available"], a["opening_held"], a["credits"], a["debits"],
             a["closing_available"], a["closing_held"], a["entries"]]
            for a in doc["assets"]
        ],
    )  # fmt: skip
    if s.entries:
        print()
        out.table(_TABLE, [_row(e, ctx.genesis) for e in s.entries])
    return EXIT_OK


def cmd_feed(ctx: Ctx, args: argparse.Namespace) -> int:
    try:
        book = IssuerBook(args.sqlite, ctx.genesis, args.issuer)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    try:

        def show(step: FeedBlock) -> None:
            if step.transactions and not ctx.as_json:
                print(f"height {step.height}: {len(step.transactions)} matching transaction(s)", flush=True)

        # The feed carries block bodies: a member's operator key reads it.
        ctx.read_with(
            "the feed",
            lambda key: book.follow(ctx.client, until_height=args.until_height, on_step=show, as_key=key),
            ctx.operator_first(),
        )
        if ctx.as_json:
            out.emit_json(
                {"issuer": book.issuer, "height": book.height, "outstanding_minor": book.outstanding()}
            )
        else:
            print(f"{book.issuer}: posted up to height {book.height}; outstanding {book.outstanding()}")
    finally:
        book.close()
    return EXIT_OK
