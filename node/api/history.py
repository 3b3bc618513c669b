"""GetAccountHistory, GetEscrow, ListEscrows and Feed: thin handlers over node/history.py (the
queries, over the node-local history index) and node/feed.py (the stream of blocks), under the
read authority of node/api/authority.py: an account's history and escrows as its balances (its
owner key or its bank's operator key); an escrow by id to the owners of its two accounts or their
banks' operators; the feed, whole blocks with bodies, to members' operator and node keys."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc

from ledger import readtoken
from ledger.genesis import Genesis
from ledger.v1 import api_pb2
from node import feed, history
from node.api.authority import ReadAuthority
from node.api.common import Abort, parse
from node.api.port import NodePort
from node.app import state as st
from node.receipts import AttestationBackfill
from node.storage.kv import KVReader

_OWNER_OR_BANK = "the account's owner key or the operator key of its bank"


class History:
    def __init__(
        self, genesis: Genesis, node: NodePort, backfill: AttestationBackfill, authority: ReadAuthority
    ) -> None:
        self.genesis = genesis
        self.node = node
        self.backfill = backfill
        self.authority = authority

    def _query(self, query: Callable[[Genesis, KVReader, bytes], bytes], raw: bytes) -> bytes:
        try:
            with self.node.read() as r:
                return query(self.genesis, r, raw)
        except history.QueryError as exc:
            raise Abort(exc.code, exc.message) from exc

    def _may_read_account(self, token: bytes | None, method: str, account_id: str) -> None:
        try:
            history.check_id(self.genesis, "account_id", account_id)
        except history.QueryError as exc:
            raise Abort(exc.code, exc.message) from exc
        caller = self.authority.authenticate(token, method, account_id, _OWNER_OR_BANK)
        with self.node.read() as r:
            acct = st.get_account(r, account_id)
        found = (acct.owner_key, acct.member_id) if acct is not None else None
        self.authority.may_read_account(caller, found, f"no account {account_id!r}")

    async def get_account_history(self, raw: bytes, token: bytes | None) -> bytes:
        req = parse(api_pb2.GetAccountHistoryRequest, raw)
        self._may_read_account(token, "GetAccountHistory", req.account_id)
        return self._query(history.account_history, raw)

    async def list_escrows(self, raw: bytes, token: bytes | None) -> bytes:
        req = parse(api_pb2.ListEscrowsRequest, raw)
        self._may_read_account(token, "ListEscrows", req.account_id)
        return self._query(history.list_escrows, raw)

    async def get_escrow(self, raw: bytes, token: bytes | None) -> bytes:
        req = parse(api_pb2.GetEscrowRequest, raw)
        caller = self.authority.authenticate(
            token,
            "GetEscrow",
            req.escrow_id,
            "the owner key of its payer or payee, or their banks' operator key",
        )
        try:
            escrow_id = history.check_id(self.genesis, "escrow_id", req.escrow_id)
        except history.QueryError as exc:
            raise Abort(exc.code, exc.message) from exc
        with self.node.read() as r:
            esc = st.get_escrow(r, escrow_id)
            parties = (
                []
                if esc is None
                else [st.get_account(r, esc.from_account), st.get_account(r, esc.to_account)]
            )
        may = any(
            a is not None and (caller.public_key == a.owner_key or caller.operator_of == a.member_id)
            for a in parties
        )
        if not may and not (esc is None and caller.member):
            raise Abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{caller.short()} owns neither account of this escrow and is not the operator of their banks",
            )
        return self._query(history.get_escrow, raw)

    async def feed(self, raw: bytes, token: bytes | None) -> AsyncIterator[bytes]:
        caller = self.authority.authenticate(
            token, "Feed", readtoken.SCOPE_ALL, "a member's operator key or node key (blocks with bodies)"
        )
        if not caller.member:
            raise Abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"Feed: {caller.short()} is not a member's operator or node key (the feed carries block bodies)",
            )
        try:
            async for message in feed.feed(self.genesis, self.node, self.backfill, raw):
                yield message
        except history.QueryError as exc:
            raise Abort(exc.code, exc.message) from exc
