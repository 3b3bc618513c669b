"""GetAccountHistory, GetEscrow, ListEscrows and Feed: thin handlers over node/history.py (the
queries, over the node-local history index) and node/feed.py (the stream of blocks)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from ledger.genesis import Genesis
from node import feed, history
from node.api.common import Abort
from node.api.port import NodePort
from node.receipts import AttestationBackfill
from node.storage.kv import KVReader


class History:
    def __init__(self, genesis: Genesis, node: NodePort, backfill: AttestationBackfill) -> None:
        self.genesis = genesis
        self.node = node
        self.backfill = backfill

    def _query(self, query: Callable[[Genesis, KVReader, bytes], bytes], raw: bytes) -> bytes:
        try:
            with self.node.read() as r:
                return query(self.genesis, r, raw)
        except history.QueryError as exc:
            raise Abort(exc.code, exc.message) from exc

    async def get_account_history(self, raw: bytes) -> bytes:
        return self._query(history.account_history, raw)

    async def get_escrow(self, raw: bytes) -> bytes:
        return self._query(history.get_escrow, raw)

    async def list_escrows(self, raw: bytes) -> bytes:
        return self._query(history.list_escrows, raw)

    async def feed(self, raw: bytes) -> AsyncIterator[bytes]:
        try:
            async for message in feed.feed(self.genesis, self.node, self.backfill, raw):
                yield message
        except history.QueryError as exc:
            raise Abort(exc.code, exc.message) from exc
