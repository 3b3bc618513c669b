"""Feed: a stream of committed blocks from a height, following the head (ledger.v1.Feed).

Each block that holds a matching transaction (every block, with no filter) is sent whole, as
GetBlock serves it: the certified block (2f+1 commits), its results and f+1 attestations, so
the SDK verifies it against the genesis keys (client/verify.py). The feed waits (bounded) for
a block's attestations before sending it; a block executed by catch-up gets them from peers
(AttestationBackfill). Runs of blocks with no match come as one bare height ("nothing matched
up to here"), sent when the feed reaches the head or every SKIP_RUN_MAX heights; when the head
does not move for IDLE_S, the last height is sent again (a heartbeat: the node is alive).

A consumer resumes from its last height + 1 on any node: heights are the same blocks on every
node, so it sees each transaction exactly once if it stores its height with what it posted.

Bad input: from_height 0, a filter id that is malformed (INVALID_ARGUMENT) or unknown
(NOT_FOUND: an account, asset or bank this ledger does not have), too many filter ids
(INVALID_ARGUMENT); a from_height past the node's next height waits up to FUTURE_WAIT_S for
the node to get there, then OUT_OF_RANGE; a height whose block this node no longer keeps
(pruned below its retention) ends the stream with OUT_OF_RANGE, saying so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager
from typing import Protocol

import grpc
from google.protobuf.message import DecodeError

from ledger.genesis import Genesis
from ledger.v1 import api_pb2, tx_pb2
from node.app import state as st
from node.history import QueryError, check_id, invalid, known_account, parse
from node.pbft import wire
from node.receipts import block_reply, field_bytes
from node.storage import blocks, prune
from node.storage.kv import KVReader

FILTER_IDS_MAX = 64
FUTURE_WAIT_S = 3.0
IDLE_S = 2.0
ATTEST_WAIT_S = 5.0
SKIP_RUN_MAX = 1000
_BLOCK = 2  # FeedMessage.block


class FeedDriver(Protocol):
    """What the feed needs of the node (node/api/port.py's NodePort has it)."""

    @property
    def head(self) -> blocks.Head: ...

    def read(self) -> AbstractContextManager[KVReader]: ...

    async def wait_height(self, height: int, timeout_s: float) -> bool: ...

    async def wait_attested(self, height: int, timeout_s: float) -> bool: ...

    def unlikely_to_be_attested(self, height: int) -> bool: ...

    def retention(self) -> prune.Retention: ...


class Backfill(Protocol):
    async def fill(self, height: int) -> bool: ...


class Filter:
    """Which transactions of a block match (node-local state: the bank of an account, the
    accounts of an escrow, neither of which ever changes once written)."""

    def __init__(self, genesis: Genesis, req: api_pb2.FeedRequest, r: KVReader) -> None:
        self.genesis = genesis
        ids = [*req.accounts, *req.assets, *req.banks]
        if len(ids) > FILTER_IDS_MAX:
            raise invalid(f"{len(ids)} filter ids; at most {FILTER_IDS_MAX}")
        for account in req.accounts:
            known_account(genesis, r, account)
        for asset in req.assets:
            if genesis.asset(check_id(genesis, "asset", asset)) is None:
                raise QueryError(grpc.StatusCode.NOT_FOUND, f"no asset {asset!r}")
        for bank in req.banks:
            if genesis.member(check_id(genesis, "bank", bank)) is None:
                raise QueryError(grpc.StatusCode.NOT_FOUND, f"no bank {bank!r}")
        self.accounts = frozenset(req.accounts)
        self.assets = frozenset(req.assets)
        self.banks = frozenset(req.banks)
        self.everything = not ids
        self._bank_of: dict[str, str] = {}

    def _bank(self, r: KVReader, account: str) -> str:
        bank = self._bank_of.get(account)
        if bank is None:
            acct = st.get_account(r, account)
            bank = acct.member_id if acct is not None else ""
            if len(self._bank_of) < 100_000:
                self._bank_of[account] = bank
        return bank

    def matches(self, r: KVReader, envelopes: list[bytes]) -> list[int]:
        if self.everything:
            return list(range(len(envelopes)))
        return [i for i, raw in enumerate(envelopes) if self._match(r, raw)]

    def _match(self, r: KVReader, raw: bytes) -> bool:
        try:
            body = tx_pb2.TxBody.FromString(tx_pb2.Envelope.FromString(raw).body)
        except DecodeError:
            return False
        accounts, assets, banks = involved(r, body)
        if accounts & self.accounts or assets & self.assets or banks & self.banks:
            return True
        if self.banks:
            if any(self._bank(r, a) in self.banks for a in accounts):
                return True
            issuers = {a.issuer for a in self.genesis.assets if a.asset in assets}
            return bool(issuers & self.banks)
        return False


def involved(r: KVReader, body: tx_pb2.TxBody) -> tuple[set[str], set[str], set[str]]:
    """(accounts, assets, banks) a transaction body names (an escrow's, from its record)."""
    kind = body.WhichOneof("op")
    if kind == "transfer":
        legs = body.transfer.legs
        return (
            {x for leg in legs for x in (leg.from_account, leg.to_account)},
            {leg.asset for leg in legs},
            set(),
        )
    if kind == "mint":
        return {body.mint.account_id}, {body.mint.asset}, set()
    if kind == "redeem":
        return {body.redeem.account_id}, {body.redeem.asset}, set()
    if kind == "escrow_create":
        e = body.escrow_create
        return {e.from_account, e.to_account}, {e.asset}, set()
    if kind in ("escrow_post", "escrow_void"):
        escrow_id = body.escrow_post.escrow_id if kind == "escrow_post" else body.escrow_void.escrow_id
        rec = st.get_escrow(r, escrow_id) if escrow_id and "\x00" not in escrow_id else None
        return (
            (set(), set(), set()) if rec is None else ({rec.from_account, rec.to_account}, {rec.asset}, set())
        )
    if kind == "open_account":
        return {body.open_account.account_id}, set(), {body.open_account.member_id}
    if kind == "set_frozen":
        return {body.set_frozen.account_id}, set(), set()
    return set(), set(), set()


def _marker(height: int, last_height: int) -> bytes:
    return api_pb2.FeedMessage(height=height, last_height=last_height).SerializeToString()


async def feed(genesis: Genesis, driver: FeedDriver, backfill: Backfill, raw: bytes) -> AsyncIterator[bytes]:
    """The Feed call: serialized FeedMessages (see the module docstring)."""
    req = parse(api_pb2.FeedRequest, raw)
    if req.from_height < 1:
        raise invalid("from_height must be >= 1 (blocks start at 1)")
    with driver.read() as r:
        chooser = Filter(genesis, req, r)
    if req.from_height > driver.head.last_executed + 1 and not await driver.wait_height(
        req.from_height - 1, FUTURE_WAIT_S
    ):
        raise QueryError(
            grpc.StatusCode.OUT_OF_RANGE,
            f"from_height {req.from_height} is past this node's next height {driver.head.last_executed + 1} "
            f"(waited {FUTURE_WAIT_S:g}s)",
        )
    with driver.read() as r:
        if req.from_height < prune.first_block(r):
            raise QueryError(
                grpc.StatusCode.FAILED_PRECONDITION,
                prune.pruned_message(f"block {req.from_height}", r, driver.retention()),
            )
    height = req.from_height
    skipped = 0  # heights with no match not yet reported
    while not req.max_blocks or height < req.from_height + req.max_blocks:
        if height > driver.head.last_executed:
            if skipped:
                yield _marker(height - 1, driver.head.last_executed)
                skipped = 0
            began = time.monotonic()
            if not await driver.wait_height(height, IDLE_S):
                yield _marker(height - 1, driver.head.last_executed)  # heartbeat
                # wait_height refuses at once when too many reads wait: pace the heartbeats.
                await asyncio.sleep(max(0.0, IDLE_S - (time.monotonic() - began)))
                continue
        with driver.read() as r:
            raw_block = blocks.get_block(r, height)
            if raw_block is None:  # a consumer slower than the retention: pruned under it
                raise _not_kept(r, driver, height)
            envelopes = list(wire.decode_certified_block(raw_block)[1])
            matches = chooser.matches(r, envelopes)
        if matches or chooser.everything:
            if skipped:
                yield _marker(height - 1, driver.head.last_executed)
                skipped = 0
            await _attested(driver, backfill, height)
            with driver.read() as r:
                reply = block_reply(r, height, genesis.f + 1)
                if reply is None:
                    raise _not_kept(r, driver, height)
            head = api_pb2.FeedMessage(height=height, matches=matches, last_height=driver.head.last_executed)
            yield head.SerializeToString() + field_bytes(_BLOCK, reply)
        else:
            skipped += 1
            if skipped >= SKIP_RUN_MAX:
                yield _marker(height, driver.head.last_executed)
                skipped = 0
        height += 1
    if skipped:
        yield _marker(height - 1, driver.head.last_executed)


def _not_kept(r: KVReader, driver: FeedDriver, height: int) -> QueryError:
    """An executed height whose block this node no longer keeps (pruned below its retention):
    FAILED_PRECONDITION, as every read of a pruned block (node/storage/prune.py)."""
    return QueryError(
        grpc.StatusCode.FAILED_PRECONDITION,
        prune.pruned_message(f"block {height}", r, driver.retention()),
    )


async def _attested(driver: FeedDriver, backfill: Backfill, height: int) -> None:
    """Wait (bounded) for the block's f+1 attestations; fetch them from peers when they will
    probably not come by consensus. Without them the block still goes: the SDK refuses it, and
    its consumer goes on from another node."""
    if driver.unlikely_to_be_attested(height):
        with driver.read() as r:
            if blocks.get_attestations(r, height):
                return
        await backfill.fill(height)
        return
    if not await driver.wait_attested(height, ATTEST_WAIT_S):
        await backfill.fill(height)
