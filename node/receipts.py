"""Receipts (docs/ARCHITECTURE.md, "Receipts") and GetBlock answers built from the block store,
and the backfill of attestations for blocks this node executed from a peer's certified copy
(catch-up).

A block replayed during catch-up has a commit certificate but no attestations here: the peers'
Attestation messages went out while this node was down. The node asks peers'
LedgerService.GetBlock for theirs and keeps them only if f+1 distinct members signed
attestations that match its own execution (digest, results root, state root). A lying peer
costs a round trip, never a wrong receipt. It does so in the background for every executed
block that will not get them the usual way (AttestationBackfill.run, rate-limited), and at once
when a client asks for a receipt of such a block.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
import grpc.aio

from ledger import merkle, readtoken
from ledger.block import ProofError, attestation_votes
from ledger.crypto import SigningKey, tx_id_of
from ledger.genesis import Genesis
from ledger.v1 import api_pb2, consensus_pb2, tx_pb2
from node.log import EventLog
from node.pbft import actions as act
from node.pbft import wire
from node.security import Dial
from node.storage import blocks, prune
from node.storage.kv import KVReader, KVStore

PROOF_CACHE_BLOCKS = 64
BACKFILL_TIMEOUT_S = 2.0
# The background backfill (AttestationBackfill.run): at most this many blocks a second (each
# costs up to n-1 GetBlock calls on the peers), a block whose fill failed is tried again after
# BACKFILL_RETRY_S, and the store is scanned BACKFILL_SCAN_BLOCKS heights per read transaction,
# every BACKFILL_IDLE_S once it is all filled.
BACKFILL_BLOCKS_PER_S = 20
BACKFILL_RETRY_S = 5.0
BACKFILL_SCAN_BLOCKS = 1024
BACKFILL_IDLE_S = 1.0


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field_varint(number: int, value: int) -> bytes:
    """One varint protobuf field (wire type 0), value >= 0."""
    return _varint(number << 3) + _varint(value)


def field_bytes(number: int, data: bytes) -> bytes:
    """One length-delimited protobuf field (wire type 2)."""
    size = len(data)
    if number < 16 and size < 0x80:  # key and length one byte each: every Merkle hash
        return bytes((number << 3 | 2, size)) + data
    return _varint(number << 3 | 2) + _varint(size) + data


# Receipt's field numbers (proto/ledger/v1/api.proto). A receipt is built as serialized bytes
# from parts: a protobuf message may be serialized as any concatenation of its fields, so the
# block's share (header, certificate) is encoded once per block and each attestation once per
# read, and only the transaction's own fields (its result and two Merkle paths) per receipt.
# tests/node/test_receipts_wire.py checks the bytes against protobuf's own encoding.
_RESULT, _RESULT_BYTES, _HEADER, _CERTIFICATE, _TX_PROOF, _RESULT_PROOF, _ATTESTATIONS = range(1, 8)
RECEIPT_BATCH_RECEIPTS = 1  # ReceiptBatch.receipts


@dataclass(frozen=True)
class _BlockView:
    """What every receipt of one block shares: parsed once, proofs computed once."""

    tx_ids: list[bytes]
    results: tuple[bytes, ...]
    tx_paths: list[list[bytes]]
    result_paths: list[list[bytes]]
    shared: bytes  # the Receipt fields header and certificate, encoded

    def receipt(self, index: int, attestations: bytes) -> bytes:
        """Serialized Receipt of entry ``index``; ``attestations``: encoded field 7."""
        result = self.results[index]
        parts = [field_bytes(_RESULT, result), field_bytes(_RESULT_BYTES, result)]
        parts += [field_bytes(_TX_PROOF, h) for h in self.tx_paths[index]]
        parts += [field_bytes(_RESULT_PROOF, h) for h in self.result_paths[index]]
        parts += (self.shared, attestations)
        return b"".join(parts)


class ProofCache:
    """Block views (parsed block, tx ids, Merkle proofs of all its entries), LRU by height.
    A stored block never changes, so an entry never goes stale."""

    def __init__(self) -> None:
        self._cache: OrderedDict[int, _BlockView] = OrderedDict()

    def get(self, r: KVReader, height: int) -> _BlockView:
        view = self._cache.get(height)
        if view is not None:
            self._cache.move_to_end(height)
            return view
        raw_block = blocks.get_block(r, height)
        assert raw_block is not None, f"tx index points at missing block {height}"
        block = consensus_pb2.CertifiedBlock.FromString(raw_block)
        results = blocks.get_results(r, height)
        tx_ids = [tx_id_of(tx_pb2.Envelope.FromString(e).body) for e in block.batch.envelopes]
        view = _BlockView(
            tx_ids=tx_ids,
            results=results,
            tx_paths=merkle.all_proofs(tx_ids)[1],
            result_paths=merkle.all_proofs(list(results))[1],
            shared=field_bytes(_HEADER, block.header)
            + field_bytes(_CERTIFICATE, block.certificate.SerializeToString(deterministic=True)),
        )
        self._cache[height] = view
        if len(self._cache) > PROOF_CACHE_BLOCKS:
            self._cache.popitem(last=False)
        return view


class ReceiptReader:
    """Serialized receipts from the store within one read transaction ``r``: each block's
    attestations are read and encoded once, however many of its receipts are asked for."""

    def __init__(self, r: KVReader, proofs: ProofCache) -> None:
        self.r = r
        self.proofs = proofs
        self._attestations: dict[int, bytes] = {}

    def receipt(self, tx_id: bytes, require_attested: bool) -> bytes | None:
        """tx_id's serialized Receipt, or None if not executed here (or not attested, if required)."""
        found = blocks.find_tx(self.r, tx_id)
        if found is None:
            return None
        attestations = self._attestations.get(found.height)
        if attestations is None:
            stored = blocks.get_attestations(self.r, found.height)
            attestations = b"".join(field_bytes(_ATTESTATIONS, a) for a in stored)
            if stored:  # none yet: read again next time, they may have arrived
                self._attestations[found.height] = attestations
        if require_attested and not attestations:
            return None
        view = self.proofs.get(self.r, found.height)
        assert view.tx_ids[found.index] == tx_id, "tx index disagrees with the stored block"
        return view.receipt(found.index, attestations)


# GetBlockResponse's field numbers, encoded the same way: the stored block, results and
# attestations go out as stored, without a parse and re-serialization per block.
_BLOCK, _BLOCK_RESULTS, _BLOCK_ATTESTATIONS, _BLOCK_ATTESTATIONS_COMPLETE = range(1, 5)


def block_reply(r: KVReader, height: int, attestations_needed: int) -> bytes | None:
    """The serialized GetBlockResponse of an executed block, or None if there is none here.
    attestations_complete says whether the stored attestations reach ``attestations_needed``
    (f+1; a node stores either none or f+1 matching ones)."""
    raw = blocks.get_block(r, height)
    if raw is None:
        return None
    attestations = blocks.get_attestations(r, height)
    parts = [field_bytes(_BLOCK, raw)]
    parts += [field_bytes(_BLOCK_RESULTS, result) for result in blocks.get_results(r, height)]
    parts += [field_bytes(_BLOCK_ATTESTATIONS, a) for a in attestations]
    if len(attestations) >= attestations_needed:
        parts.append(field_varint(_BLOCK_ATTESTATIONS_COMPLETE, 1))
    return b"".join(parts)


def receipt_batches(receipts: Sequence[bytes], bytes_max: int) -> list[bytes]:
    """Serialized ReceiptBatch messages holding ``receipts`` in order, each under ``bytes_max``
    where it can be (a single larger receipt goes alone)."""
    out: list[bytes] = []
    parts: list[bytes] = []
    size = 0
    for receipt in receipts:
        entry = field_bytes(RECEIPT_BATCH_RECEIPTS, receipt)
        if parts and size + len(entry) > bytes_max:
            out.append(b"".join(parts))
            parts, size = [], 0
        parts.append(entry)
        size += len(entry)
    out.append(b"".join(parts))
    return out


def build_receipt(
    r: KVReader, proofs: ProofCache, tx_id: bytes, require_attested: bool
) -> api_pb2.Receipt | None:
    """tx_id's receipt from the store, parsed, or None (see ReceiptReader.receipt)."""
    raw = ReceiptReader(r, proofs).receipt(tx_id, require_attested)
    return None if raw is None else api_pb2.Receipt.FromString(raw)


def matching_attestations(
    genesis: Genesis,
    crypto: act.ConsensusCrypto,
    height: int,
    digest: bytes,
    results_root: bytes,
    state_root: bytes,
    candidates: Sequence[bytes],
) -> list[bytes]:
    """The candidates (serialized SignedMessage: one peer's served set) that are valid
    Attestations of exactly this outcome, one per member, in signer order: the attestation rule
    clients apply (ledger/block.py ``attestation_votes``), taking our own outcome's group.
    Nothing from a set of more than 2n entries."""
    try:
        votes = attestation_votes(candidates, genesis.n, height, digest, crypto.verify)
    except ProofError:
        return []
    return [raw for _, raw in sorted(votes.groups.get((results_root, state_root), []))]


def _identity(raw: bytes) -> bytes:
    return raw


class AttestationBackfill:
    def __init__(
        self,
        genesis: Genesis,
        own_replica: int,
        crypto: act.ConsensusCrypto,
        store: KVStore,
        log: EventLog,
        reply_bytes_max: int = 128 << 20,
        reader: SigningKey | None = None,
        *,
        dial: Dial,  # node/security.py: TLS with the node's certificate, or plaintext
        # Stores what was fetched, in the node's loop (node/driver.py: Driver.put_attestations;
        # only the loop writes the store); True once on disk.
        put: Callable[[int, Sequence[bytes], float], Awaitable[bool]],
    ) -> None:
        self._dial = dial
        self._put = put
        self.genesis = genesis
        # The node key: peers serve a member's node the blocks' attestations (node/api/authority.py).
        self.reader = reader
        self.reply_bytes_max = reply_bytes_max  # a peer's GetBlock reply: a whole block
        self.own_replica = own_replica
        self.crypto = crypto
        self.store = store
        self.log = log
        self._channels: dict[int, grpc.aio.Channel] = {}
        self._filling: dict[int, asyncio.Future[bool]] = {}  # height -> the fill under way
        self._task: asyncio.Task[None] | None = None

    async def _get_block(self, replica: int, height: int) -> api_pb2.GetBlockResponse | None:
        channel = self._channels.get(replica)
        if channel is None:
            channel = self._dial(
                self.genesis.members[replica].api_address,
                [("grpc.max_receive_message_length", self.reply_bytes_max)],
            )
            self._channels[replica] = channel
        call = channel.unary_unary(
            "/ledger.v1.LedgerService/GetBlock",
            request_serializer=_identity,
            response_deserializer=_identity,
        )
        metadata = readtoken.metadata(self.reader, self.genesis.chain_id, "GetBlock", readtoken.SCOPE_ALL)
        try:
            raw = await call(
                api_pb2.GetBlockRequest(height=height).SerializeToString(),
                timeout=BACKFILL_TIMEOUT_S,
                metadata=metadata,
            )
            return api_pb2.GetBlockResponse.FromString(raw)
        except grpc.aio.AioRpcError:
            return None
        except Exception:  # a peer's garbage answer
            self.log.count("peer_garbage")
            return None

    async def fill(self, height: int) -> bool:
        """Fetch and store f+1 matching attestations of an executed block; True on success (at
        once if it has them). Idempotent; concurrent calls for one height share one fetch."""
        running = self._filling.get(height)
        if running is not None:
            return await asyncio.shield(running)
        task = asyncio.ensure_future(self._fill(height))
        self._filling[height] = task
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                self._filling.pop(height, None)
            else:  # this caller was cancelled: the fetch goes on for the others
                task.add_done_callback(lambda _: self._filling.pop(height, None))

    async def _fill(self, height: int) -> bool:
        with self.store.read() as r:
            if blocks.get_attestations(r, height):
                return True
            raw_block = blocks.get_block(r, height)
            outcome = blocks.get_outcome(r, height)
        if raw_block is None or outcome is None:
            return False
        digest = wire.digest_of(consensus_pb2.CertifiedBlock.FromString(raw_block).header)
        results_root, state_root = outcome
        good: dict[int, bytes] = {}  # signer -> its attestation of our outcome, from any peer
        for m in self.genesis.members:
            if m.replica == self.own_replica:
                continue
            resp = await self._get_block(m.replica, height)
            if resp is None:
                continue
            served = [a.SerializeToString() for a in resp.attestations]
            for raw in matching_attestations(
                self.genesis, self.crypto, height, digest, results_root, state_root, served
            ):
                good.setdefault(wire.decode_signed(raw)[1], raw)
            if len(good) >= self.genesis.f + 1:
                return await self._put(
                    height, [good[s] for s in sorted(good)][: self.genesis.f + 1], BACKFILL_TIMEOUT_S
                )
        self.log.count("attestations_backfill_failed")
        return False

    # --- in the background ----------------------------------------------------------------

    def start(self, last_executed: Callable[[], int], unlikely: Callable[[int], bool]) -> None:
        """Run ``run`` until close(). See run for the arguments."""
        self._task = asyncio.get_running_loop().create_task(self.run(last_executed, unlikely))

    async def run(self, last_executed: Callable[[], int], unlikely: Callable[[int], bool]) -> None:
        """Give every executed block its f+1 attestations: those ``unlikely`` to get them the
        usual way (replayed by catch-up, or well behind the head: driver.unlikely_to_be_attested)
        are filled from the peers, lowest first, at most BACKFILL_BLOCKS_PER_S a second (the
        loop that stores them wakes that block's receipt waiters).
        Reads the whole store once from height 1 (a restart finds what an earlier run left
        unfilled), then each new block; a failed block is tried again after BACKFILL_RETRY_S."""
        scanned = 0  # every height up to here has been looked at
        gaps: dict[int, float] = {}  # height without attestations -> when it may be tried
        while True:
            last = last_executed()
            scanned, found = self._scan(scanned, last)
            gaps.update(dict.fromkeys(found, 0.0))
            now = time.monotonic()
            with self.store.read() as r:
                first = prune.first_block(r)
            for height in [h for h in gaps if h < first]:  # pruned: nothing to fill any more
                del gaps[height]
            due = sorted(h for h, at in gaps.items() if at <= now and unlikely(h))[:BACKFILL_SCAN_BLOCKS]
            for height in due:
                with self.store.read() as r:
                    if r.get(blocks.attestations_key(height)) is not None:  # came the usual way
                        del gaps[height]
                        continue
                if await self.fill(height):
                    del gaps[height]
                else:
                    gaps[height] = time.monotonic() + BACKFILL_RETRY_S
                await asyncio.sleep(1 / BACKFILL_BLOCKS_PER_S)  # the rate limit itself
            if not due and scanned >= last:
                await asyncio.sleep(BACKFILL_IDLE_S)  # polling the store for new gaps
            elif not due:
                await asyncio.sleep(0)  # between scan chunks: let the node's loop run

    def _scan(self, scanned: int, last: int) -> tuple[int, list[int]]:
        """(how far it has looked now, the heights without attestations found) over at most
        BACKFILL_SCAN_BLOCKS heights after ``scanned``, in one read transaction."""
        with self.store.read() as r:
            scanned = max(scanned, prune.first_block(r) - 1)  # pruned blocks need nothing
            top = min(last, scanned + BACKFILL_SCAN_BLOCKS)
            found = [h for h in range(scanned + 1, top + 1) if r.get(blocks.attestations_key(h)) is None]
        return max(scanned, top), found

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for channel in self._channels.values():
            await channel.close(None)
