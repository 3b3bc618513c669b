"""Receipts (docs/ARCHITECTURE.md, "Receipts") built from the block store, and the backfill of
attestations for blocks this node executed from a peer's certified copy (catch-up).

A block replayed during catch-up has a commit certificate but no attestations here: the peers'
Attestation messages went out while this node was down. Before answering a receipt for such a
block, the node asks peers' LedgerService.GetBlock for theirs and keeps them only if f+1
distinct members signed attestations that match its own execution (digest, results root,
state root). A lying peer costs a round trip, never a wrong receipt.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import grpc.aio

from ledger import merkle
from ledger.genesis import Genesis
from ledger.v1 import api_pb2, consensus_pb2, tx_pb2
from node.log import EventLog
from node.pbft import actions as act
from node.pbft import wire
from node.storage import blocks
from node.storage.kv import KVReader, KVStore

PROOF_CACHE_BLOCKS = 64
BACKFILL_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class _BlockView:
    """What every receipt of one block shares: parsed once, proofs computed once."""

    header: bytes
    certificate: consensus_pb2.CommitCertificate
    tx_ids: list[bytes]
    results: tuple[bytes, ...]
    tx_paths: list[list[bytes]]
    result_paths: list[list[bytes]]


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
        tx_ids = [hashlib.sha256(tx_pb2.Envelope.FromString(e).body).digest() for e in block.batch.envelopes]
        view = _BlockView(
            header=block.header,
            certificate=block.certificate,
            tx_ids=tx_ids,
            results=results,
            tx_paths=merkle.all_proofs(tx_ids)[1],
            result_paths=merkle.all_proofs(list(results))[1],
        )
        self._cache[height] = view
        if len(self._cache) > PROOF_CACHE_BLOCKS:
            self._cache.popitem(last=False)
        return view


def build_receipt(
    r: KVReader, proofs: ProofCache, tx_id: bytes, require_attested: bool
) -> api_pb2.Receipt | None:
    """tx_id's receipt from the store, or None if not executed here (or not attested, if required)."""
    found = blocks.find_tx(r, tx_id)
    if found is None:
        return None
    attestations = blocks.get_attestations(r, found.height)
    if require_attested and not attestations:
        return None
    view = proofs.get(r, found.height)
    assert view.tx_ids[found.index] == tx_id, "tx index disagrees with the stored block"
    result = view.results[found.index]
    receipt = api_pb2.Receipt(
        result=tx_pb2.TxResult.FromString(result),
        result_bytes=result,
        header=view.header,
        certificate=view.certificate,
        tx_proof=view.tx_paths[found.index],
        result_proof=view.result_paths[found.index],
    )
    for a in attestations:
        receipt.attestations.add().MergeFromString(a)
    return receipt


def matching_attestations(
    genesis: Genesis,
    crypto: act.ConsensusCrypto,
    height: int,
    digest: bytes,
    results_root: bytes,
    state_root: bytes,
    candidates: Sequence[bytes],
) -> list[bytes]:
    """The candidates (serialized SignedMessage) that are valid Attestations of exactly this
    outcome, one per member, in signer order."""
    good: dict[int, bytes] = {}
    for raw in candidates:
        try:
            body, signer, signature = wire.decode_signed(raw)
            msg = wire.decode_body(body)
        except wire.WireError:
            continue
        if not isinstance(msg, wire.Attestation) or signer in good or msg.replica != signer:
            continue
        if (msg.sequence, msg.digest, msg.results_root, msg.state_root) != (
            height,
            digest,
            results_root,
            state_root,
        ):
            continue
        if crypto.verify(signer, body, signature):
            good[signer] = raw
    return [good[s] for s in sorted(good)]


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
    ) -> None:
        self.genesis = genesis
        self.reply_bytes_max = reply_bytes_max  # a peer's GetBlock reply: a whole block
        self.own_replica = own_replica
        self.crypto = crypto
        self.store = store
        self.log = log
        self._channels: dict[int, grpc.aio.Channel] = {}

    async def _get_block(self, replica: int, height: int) -> api_pb2.GetBlockResponse | None:
        channel = self._channels.get(replica)
        if channel is None:
            channel = grpc.aio.insecure_channel(
                self.genesis.members[replica].api_address,
                options=[("grpc.max_receive_message_length", self.reply_bytes_max)],
            )
            self._channels[replica] = channel
        call = channel.unary_unary(
            "/ledger.v1.LedgerService/GetBlock",
            request_serializer=_identity,
            response_deserializer=_identity,
        )
        try:
            raw = await call(
                api_pb2.GetBlockRequest(height=height).SerializeToString(), timeout=BACKFILL_TIMEOUT_S
            )
            return api_pb2.GetBlockResponse.FromString(raw)
        except grpc.aio.AioRpcError:
            return None
        except Exception:  # a peer's garbage answer
            self.log.count("peer_garbage")
            return None

    async def fill(self, height: int) -> bool:
        """Fetch and store f+1 matching attestations of an executed block; True on success."""
        with self.store.read() as r:
            if blocks.get_attestations(r, height):
                return True
            raw_block = blocks.get_block(r, height)
            outcome = blocks.get_outcome(r, height)
        if raw_block is None or outcome is None:
            return False
        digest = wire.digest_of(consensus_pb2.CertifiedBlock.FromString(raw_block).header)
        results_root, state_root = outcome
        collected: list[bytes] = []
        for m in self.genesis.members:
            if m.replica == self.own_replica:
                continue
            resp = await self._get_block(m.replica, height)
            if resp is None:
                continue
            collected.extend(a.SerializeToString() for a in resp.attestations)
            good = matching_attestations(
                self.genesis, self.crypto, height, digest, results_root, state_root, collected
            )
            if len(good) >= self.genesis.f + 1:
                with self.store.write() as w:
                    blocks.put_attestations(w, height, good[: self.genesis.f + 1])
                self.log.count("attestations_backfilled")
                return True
        self.log.count("attestations_backfill_failed")
        return False

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)
