"""Reads: GetTransaction, GetAccount, GetSupply, GetBlock(s), GetStatus. Reads of current state
carry the height they were read at, in the same read transaction as the state. Every read but
GetStatus takes the call's read token and asks node/api/authority.py who may see what."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from ledger.genesis import Genesis
from ledger.readtoken import SCOPE_ALL, tx_scope
from ledger.v1 import api_pb2, consensus_pb2, tx_pb2
from node.api.authority import ReadAuthority, header_view
from node.api.common import Abort, checked_tx_id, parse
from node.api.port import NodePort
from node.app.codec import decode_result
from node.app.ledger import Ledger
from node.app.state import result_key
from node.log import EventLog
from node.receipts import (
    AttestationBackfill,
    ProofCache,
    block_reply,
    build_receipt,
    field_bytes,
    field_varint,
)
from node.storage import blocks, prune
from node.storage.kv import KVReader

# GetBlocks: blocks per reply, and its size (as a ReceiptBatch's: under clients' default 4 MiB).
BLOCKS_PER_REPLY_MAX = 512
BLOCKS_REPLY_BYTES_MAX = 2 << 20
GET_BLOCKS_BLOCKS, GET_BLOCKS_NEXT_HEIGHT, GET_BLOCKS_LAST_HEIGHT = 1, 2, 3  # GetBlocksResponse
# A read with min_height waits this long at most for the node to reach it.
MIN_HEIGHT_WAIT_S = 3.0


class Queries:
    def __init__(
        self,
        genesis: Genesis,
        member_id: str,
        replica_id: int,
        node: NodePort,
        ledger: Ledger,
        replica_status: Callable[[], dict[str, int]],
        log: EventLog,
        backfill: AttestationBackfill,
        proofs: ProofCache,
        space: Callable[[], dict[str, int]],
        authority: ReadAuthority,
    ) -> None:
        self.genesis = genesis
        self.member_id = member_id
        self.replica_id = replica_id
        self.node = node
        self.ledger = ledger
        self.replica_status = replica_status
        self.log = log
        self.backfill = backfill
        self.proofs = proofs
        self.space = space  # the store's figures for GetStatus
        self.min_height_wait_s = MIN_HEIGHT_WAIT_S
        self.authority = authority

    async def get_transaction(self, raw: bytes, token: bytes | None) -> bytes:
        req = parse(api_pb2.GetTransactionRequest, raw)
        tx_id = checked_tx_id(req.tx_id)
        caller = self.authority.authenticate(
            token,
            "GetTransaction",
            tx_scope(tx_id),
            "a key that signed the transaction or a member's operator key",
        )
        with self.node.read() as r:
            self._pruned_tx(r, tx_id)
            receipt = build_receipt(r, self.proofs, tx_id, require_attested=False)
        if (
            receipt is not None
            and not receipt.attestations
            and self.node.unlikely_to_be_attested(receipt.result.height)
        ):
            await self.backfill.fill(receipt.result.height)
        with self.node.read() as r:
            self._pruned_tx(r, tx_id)  # pruned while the backfill ran
            receipt = build_receipt(r, self.proofs, tx_id, require_attested=False)
            if receipt is None:
                if not self.node.holds(tx_id):
                    raise Abort(grpc.StatusCode.NOT_FOUND, f"transaction {tx_id.hex()} is not committed here")
                if req.include_pending:
                    return api_pb2.GetTransactionResponse(
                        status=api_pb2.TX_STATUS_PENDING
                    ).SerializeToString()
                raise Abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"transaction {tx_id.hex()} is not committed here (pending: admitted, not executed yet)",
                )
            found = blocks.find_tx(r, tx_id)
            assert found is not None
            block_raw = blocks.get_block(r, found.height)
        assert block_raw is not None
        block = consensus_pb2.CertifiedBlock.FromString(block_raw)
        envelope = tx_pb2.Envelope.FromString(block.batch.envelopes[found.index])
        if not caller.member and caller.public_key not in {s.public_key for s in envelope.signatures}:
            raise Abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{caller.short()} did not sign transaction {tx_id.hex()} and is not a member's operator key",
            )
        out = api_pb2.GetTransactionResponse(
            receipt=receipt, envelope=envelope, status=api_pb2.TX_STATUS_COMMITTED
        )
        return out.SerializeToString()

    def _pruned_tx(self, r: KVReader, tx_id: bytes) -> None:
        """FAILED_PRECONDITION for a transaction whose block was pruned here. The ledger keeps
        its recorded result (code, height, index), which the message gives; the receipt (the
        block's certificate, proofs and attestations) and the envelope went with the block."""
        found = blocks.find_tx(r, tx_id)
        first = prune.first_block(r)
        if found is None or found.height >= first:
            return
        what = f"the block of transaction {tx_id.hex()} (height {found.height})"
        recorded = r.get(result_key(tx_id)) if found.recorded else None
        outcome = ""
        if recorded is not None:
            outcome = f"; its recorded result: {decode_result(recorded).code.name} at height {found.height}"
        raise Abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            prune.pruned_message(what, r, self.node.retention()) + outcome,
        )

    def _pruned_block(self, r: KVReader, height: int) -> None:
        first = prune.first_block(r)
        if 1 <= height < first:
            raise Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                prune.pruned_message(f"block {height}", r, self.node.retention()),
            )

    async def _reach(self, min_height: int) -> None:
        """Return once this node has executed min_height, waiting at most MIN_HEIGHT_WAIT_S
        (a read asking for a state no older than that height)."""
        if min_height and not await self.node.wait_height(min_height, self.min_height_wait_s):
            raise Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"node is at height {self.node.head.last_executed} < min_height {min_height} "
                f"(waited {self.min_height_wait_s:g}s)",
            )

    async def get_account(self, raw: bytes, token: bytes | None) -> bytes:
        req = parse(api_pb2.GetAccountRequest, raw)
        account_id = req.account_id
        if not account_id or len(account_id.encode()) > self.genesis.limits.id_bytes_max:
            raise Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"account_id must be 1..{self.genesis.limits.id_bytes_max} bytes",
            )
        caller = self.authority.authenticate(
            token, "GetAccount", account_id, "the account's owner key or the operator key of its bank"
        )
        await self._reach(req.min_height)
        with self.node.read() as r:  # the account and its height: one snapshot
            acct = self.ledger.account(r, account_id)
            height = self.ledger.last_height(r)
        found = (acct.owner_key, acct.member_id) if acct is not None else None
        self.authority.may_read_account(caller, found, f"no account {account_id!r} at height {height}")
        assert acct is not None
        out = api_pb2.Account(
            account_id=acct.account_id,
            member_id=acct.member_id,
            owner_key=acct.owner_key,
            frozen=acct.frozen,
            height=height,
        )
        for b in acct.balances:
            out.balances.add(asset=b.asset, available=b.available, held=b.held)
        return out.SerializeToString()

    async def get_block(self, raw: bytes, token: bytes | None) -> bytes:
        req = parse(api_pb2.GetBlockRequest, raw)
        caller = self.authority.known(token, "GetBlock", SCOPE_ALL)
        with self.node.read() as r:
            self._pruned_block(r, req.height)
            reply = block_reply(r, req.height, self.genesis.f + 1)
        if reply is None:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"no block at height {req.height} here")
        return reply if caller.member else header_view(reply)

    async def get_blocks(self, raw: bytes, token: bytes | None) -> bytes:
        """GetBlocks: consecutive blocks from from_height, at most max_blocks (capped at
        BLOCKS_PER_REPLY_MAX) and BLOCKS_REPLY_BYTES_MAX bytes (a single larger block goes
        alone), read in one read transaction."""
        req = parse(api_pb2.GetBlocksRequest, raw)
        if req.from_height < 1:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "from_height must be >= 1 (blocks start at 1)")
        if req.max_blocks < 1:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "max_blocks must be >= 1")
        caller = self.authority.known(token, "GetBlocks", SCOPE_ALL)
        count_max = min(req.max_blocks, BLOCKS_PER_REPLY_MAX)
        parts: list[bytes] = []
        size = 0
        height = req.from_height
        with self.node.read() as r:
            last = self.ledger.last_height(r)
            self._pruned_block(r, height)
            while height <= last and len(parts) < count_max:
                block = block_reply(r, height, self.genesis.f + 1)
                assert block is not None, f"executed block {height} missing from the store"
                if not caller.member:
                    block = header_view(block)
                entry = field_bytes(GET_BLOCKS_BLOCKS, block)
                if parts and size + len(entry) > BLOCKS_REPLY_BYTES_MAX:
                    break
                parts.append(entry)
                size += len(entry)
                height += 1
        parts.append(field_varint(GET_BLOCKS_NEXT_HEIGHT, height))
        parts.append(field_varint(GET_BLOCKS_LAST_HEIGHT, last))
        return b"".join(parts)

    async def get_supply(self, raw: bytes, token: bytes | None) -> bytes:
        req = parse(api_pb2.GetSupplyRequest, raw)
        self.authority.known(token, "GetSupply", SCOPE_ALL)
        await self._reach(req.min_height)
        with self.node.read() as r:
            supply = self.ledger.supply(r)
            height = self.ledger.last_height(r)
        out = api_pb2.GetSupplyResponse(height=height)
        for a in supply:
            out.assets.add(
                asset=a.asset,
                issuer=a.issuer,
                scale=a.scale,
                minted=a.minted,
                redeemed=a.redeemed,
                outstanding=a.outstanding,
            )
        return out.SerializeToString()

    async def get_status(self, raw: bytes) -> bytes:
        parse(api_pb2.GetStatusRequest, raw)
        head = self.node.head
        rs = self.replica_status()
        view = rs.get("view", 0)
        out = api_pb2.NodeStatus(
            member_id=self.member_id,
            replica=self.replica_id,
            view=view,
            primary=view % self.genesis.n,
            in_view_change=bool(rs.get("in_view_change", 0)),
            last_executed=head.last_executed,
            stable_checkpoint=rs.get("stable_checkpoint", 0),
            state_root=head.state_root,
            pending_requests=self.node.pending_count(),
            chain_id=self.genesis.chain_id,
            last_block_hash=head.last_block_hash,
        )
        for m in self.genesis.members:
            if m.replica != self.replica_id:
                out.peers.add(replica=m.replica, member_id=m.member_id, up=self.node.peer_up(m.replica))
        for name, value in self.log.counters.items():
            out.counters[name] = value
        for name, value in rs.items():
            if name.startswith("replica_"):
                out.counters[name] = value
        for name, value in self.space().items():
            out.counters[name] = value
        for name, value in self.node.status_counters().items():
            out.counters[name] = value
        return out.SerializeToString()
