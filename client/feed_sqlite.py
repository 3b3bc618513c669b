"""A back-office consumer of the feed: an issuer's mints and redeems posted into SQLite.

    with LedgerClient(genesis) as client:
        IssuerBook("bank-a.sqlite", client.genesis, "BANK-A").follow(client)

Exactly once: each feed step (a verified block, or a mark that nothing matched up to a height)
is posted in ONE SQLite transaction together with the book's last height, so after a crash or
a node's death the book resumes from that height + 1 (on any node) and never posts a block
twice or skips one. tx_id is the primary key of the postings too: a double post would fail
loudly, not pass silently. Only successful (result OK) mints and redeems of the issuer's assets
are posted; what the feed verified (certificate, f+1 attestations) is what goes in.

PostgreSQL is not supported (it would be the same two statements per step in one transaction).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from client.history import FeedBlock
from client.sdk import LedgerClient
from ledger.crypto import SigningKey
from ledger.genesis import Genesis

SCHEMA = """
CREATE TABLE IF NOT EXISTS feed_position (id INTEGER PRIMARY KEY CHECK (id = 1), height INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS postings (
    tx_id TEXT PRIMARY KEY,
    height INTEGER NOT NULL,
    tx_index INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('MINT', 'REDEEM')),
    account TEXT NOT NULL,
    asset TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (amount > 0),
    reference TEXT NOT NULL
);
"""


class IssuerBook:
    """The SQLite book of one issuer's mints and redeems, fed from the ledger's feed."""

    def __init__(self, path: Path | str, genesis: Genesis, issuer: str) -> None:
        if genesis.member(issuer) is None:
            raise ValueError(f"{issuer!r} is not a member of this consortium")
        self.issuer = issuer
        self.assets = tuple(a.asset for a in genesis.assets if a.issuer == issuer)
        if not self.assets:
            raise ValueError(f"{issuer} issues no asset")
        self.db = sqlite3.connect(str(path), isolation_level=None)  # transactions are explicit
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    @property
    def height(self) -> int:
        """The last height posted (0: none)."""
        row = self.db.execute("SELECT height FROM feed_position WHERE id = 1").fetchone()
        return int(row[0]) if row else 0

    def post(self, step: FeedBlock) -> int:
        """Post one feed step and its height in one transaction; returns the rows added."""
        rows = []
        for tx in step.transactions:
            op = tx.body.WhichOneof("op")
            if not tx.ok or op not in ("mint", "redeem"):
                continue
            m = tx.body.mint if op == "mint" else tx.body.redeem
            if m.asset not in self.assets:
                continue
            account = tx.body.mint.account_id if op == "mint" else tx.body.redeem.account_id
            ref = tx.body.mint.deposit_ref if op == "mint" else tx.body.redeem.payout_ref
            rows.append((tx.tx_id.hex(), step.height, tx.index, op.upper(), account, m.asset, m.amount, ref))
        self.db.execute("BEGIN IMMEDIATE")
        try:
            if step.height <= self.height:  # a heartbeat, or a mark already covered
                self.db.execute("ROLLBACK")
                return 0
            self.db.executemany("INSERT INTO postings VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self.db.execute(
                "INSERT INTO feed_position (id, height) VALUES (1, ?) "
                "ON CONFLICT (id) DO UPDATE SET height = excluded.height",
                (step.height,),
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return len(rows)

    def outstanding(self) -> dict[str, int]:
        """Per asset: minted - redeemed, as posted (to reconcile with GetSupply)."""
        out = dict.fromkeys(self.assets, 0)
        for asset, kind, total in self.db.execute(
            "SELECT asset, kind, SUM(amount) FROM postings GROUP BY asset, kind"
        ):
            out[asset] += int(total) if kind == "MINT" else -int(total)
        return out

    def follow(
        self,
        client: LedgerClient,
        until_height: int | None = None,
        on_step: Callable[[FeedBlock], None] | None = None,
        as_key: SigningKey | None = None,
    ) -> None:
        """Post the feed from the book's height + 1, until ``until_height`` is posted (None:
        for ever). The feed fails over between nodes by itself (LedgerClient.feed)."""
        if until_height is not None and self.height >= until_height:
            return
        steps = client.feed(self.height + 1, assets=self.assets, as_key=as_key)
        try:
            for step in steps:
                self.post(step)
                if on_step is not None:
                    on_step(step)
                if until_height is not None and self.height >= until_height:
                    return
        finally:
            steps.close()
