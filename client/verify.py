"""Receipt and block verification against the genesis keys (docs/ARCHITECTURE.md, "Receipts").

One node's receipt is trusted only when it proves itself:
  * the commit certificate holds 2f+1 valid Commit signatures from distinct members, all with
    one view, sequence = header.height and digest = SHA-256(header);
  * the tx_id is leaf ``result.index`` of ``header.tx_root``;
  * ``result_bytes`` is the TxResult (for this tx_id, at this height and index) and leaf
    ``result.index`` of the attested ``results_root``;
  * f+1 distinct members signed matching Attestations (sequence, digest, results_root,
    state_root): f+1 include an honest member, so the result is the one the ledger computed.
Signatures are checked over the exact bytes received, never over re-serialized objects.
Extra votes beyond a quorum that do not verify are ignored (a node may pass on more than it
needs); what counts is the number of valid, distinct, matching ones. Every failure raises
ReceiptError with a stable ``reason`` and a message naming the first culprit.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError

from ledger import merkle
from ledger.block import ProofError, VerifyFn, attested, batch_hash, certified, digest_of
from ledger.crypto import DOMAIN_CONSENSUS, tx_id_of, verify
from ledger.genesis import Genesis
from ledger.v1 import api_pb2, consensus_pb2, tx_pb2

HEADER_BYTES_MAX = 1024
RESULT_BYTES_MAX = 4096


class ReceiptError(Exception):
    """A receipt or block does not prove what it claims. ``reason`` is a stable short code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True)
class CertifiedHeader:
    """A block header proven committed by 2f+1 members."""

    header: tx_pb2.BlockHeader
    digest: bytes
    view: int
    commit_signers: tuple[int, ...]


@dataclass(frozen=True)
class Attested:
    """f+1 members' matching statement of a block's results and state root."""

    results_root: bytes
    state_root: bytes
    signers: tuple[int, ...]


@dataclass(frozen=True)
class VerifiedReceipt:
    """A transaction's result, proven by a commit certificate and f+1 attestations."""

    tx_id: bytes
    result: tx_pb2.TxResult
    result_bytes: bytes
    block: CertifiedHeader
    attested: Attested

    @property
    def code(self) -> int:
        return int(self.result.code)

    @property
    def code_name(self) -> str:
        return tx_pb2.ResultCode.Name(self.result.code)

    @property
    def height(self) -> int:
        return int(self.result.height)

    @property
    def index(self) -> int:
        return int(self.result.index)


@dataclass(frozen=True)
class VerifiedBlock:
    """A certified block whose batch matches its header (and results, when attested)."""

    block: CertifiedHeader
    envelopes: tuple[bytes, ...]
    tx_ids: tuple[bytes, ...]
    results: tuple[tx_pb2.TxResult, ...]  # empty when the node sent none
    attested: Attested | None
    # False for a block served without its batch and results (a reader that is not a member's
    # operator: docs/ARCHITECTURE.md, "Who may read"): only the header is verified.
    bodies: bool = True


_M = TypeVar("_M", tx_pb2.BlockHeader, tx_pb2.TxResult)
_V = TypeVar("_V")


def _parse(kind: type[_M], raw: bytes, reason: str) -> _M:
    msg = kind()
    try:
        msg.ParseFromString(raw)
    except DecodeError as exc:
        raise ReceiptError(reason, f"not a serialized {kind.__name__} ({exc})") from exc
    return msg


def member_signature(genesis: Genesis) -> VerifyFn:
    """A consensus signature check against the genesis members' node keys."""

    def check(signer: int, body: bytes, signature: bytes) -> bool:
        return verify(genesis.members[signer].node_key, signature, DOMAIN_CONSENSUS, genesis.chain_id, body)

    return check


def verify_certificate(
    genesis: Genesis, header_bytes: bytes, certificate: consensus_pb2.CommitCertificate
) -> CertifiedHeader:
    """Check that 2f+1 distinct members committed SHA-256(header_bytes) at header.height
    in one view (ledger/block.py ``certified``: the one rule nodes apply too)."""
    if len(header_bytes) > HEADER_BYTES_MAX:
        raise ReceiptError("malformed", f"header larger than {HEADER_BYTES_MAX} bytes")
    header = _parse(tx_pb2.BlockHeader, header_bytes, "malformed")
    if header.chain_id != genesis.chain_id:
        raise ReceiptError("wrong_chain", f"block is of chain {header.chain_id!r}, not {genesis.chain_id!r}")
    digest = digest_of(header_bytes)
    commits = [c.SerializeToString() for c in certificate.commits]
    try:
        quorum = certified(commits, genesis.n, genesis.f, header.height, digest, member_signature(genesis))
    except ProofError as exc:
        raise ReceiptError(exc.reason, exc.message) from exc
    return CertifiedHeader(header=header, digest=digest, view=quorum.vote, commit_signers=quorum.signers)


def verify_attestations(
    genesis: Genesis, sequence: int, digest: bytes, attestations: Sequence[consensus_pb2.SignedMessage]
) -> Attested:
    """Check that f+1 distinct members attested the same roots for block (sequence, digest)
    (ledger/block.py ``attested``)."""
    entries = [a.SerializeToString() for a in attestations]
    try:
        quorum = attested(entries, genesis.n, genesis.f, sequence, digest, member_signature(genesis))
    except ProofError as exc:
        raise ReceiptError(exc.reason, exc.message) from exc
    results_root, state_root = quorum.vote
    return Attested(results_root=results_root, state_root=state_root, signers=quorum.signers)


class VerificationCache:
    """Certificates and attestation sets already verified for one genesis, keyed by a hash of
    the exact bytes received, so the receipts of one block cost one round of signature checks
    instead of one per receipt (~5 Ed25519 verifications each). A changed byte is a miss and is
    verified in full; failures are never cached. Bounded: least recently used entries go."""

    def __init__(self, genesis: Genesis, entries_max: int = 512) -> None:
        self.genesis = genesis
        self.entries_max = entries_max
        self._certs: OrderedDict[bytes, CertifiedHeader] = OrderedDict()
        self._attested: OrderedDict[bytes, Attested] = OrderedDict()
        self.hits = 0

    def _remember(self, table: OrderedDict[bytes, _V], key: bytes, value: _V) -> _V:
        table[key] = value
        if len(table) > self.entries_max:
            table.popitem(last=False)
        return value

    def certificate(
        self, header_bytes: bytes, certificate: consensus_pb2.CommitCertificate
    ) -> CertifiedHeader:
        key = _cache_key(header_bytes, *(c.SerializeToString() for c in certificate.commits))
        found = self._certs.get(key)
        if found is not None:
            self._certs.move_to_end(key)
            self.hits += 1
            return found
        return self._remember(self._certs, key, verify_certificate(self.genesis, header_bytes, certificate))

    def attestations(
        self, sequence: int, digest: bytes, attestations: Sequence[consensus_pb2.SignedMessage]
    ) -> Attested:
        key = _cache_key(sequence.to_bytes(8, "big"), digest, *(a.SerializeToString() for a in attestations))
        found = self._attested.get(key)
        if found is not None:
            self._attested.move_to_end(key)
            self.hits += 1
            return found
        return self._remember(
            self._attested, key, verify_attestations(self.genesis, sequence, digest, attestations)
        )


def _cache_key(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


def verify_receipt(
    genesis: Genesis, receipt: api_pb2.Receipt, tx_id: bytes, cache: VerificationCache | None = None
) -> VerifiedReceipt:
    """Verify a node's receipt that ``tx_id`` committed with ``receipt.result_bytes``.
    With a cache (for this genesis), a block's certificate and attestations are checked once."""
    if cache is not None and cache.genesis is not genesis:
        raise ValueError("the verification cache belongs to another genesis")
    if len(receipt.result_bytes) > RESULT_BYTES_MAX:
        raise ReceiptError("malformed", f"result larger than {RESULT_BYTES_MAX} bytes")
    result = _parse(tx_pb2.TxResult, receipt.result_bytes, "malformed")
    # The decoded copy is a convenience; the signed-over bytes are the truth, so they must agree.
    if receipt.HasField("result") and receipt.result != result:
        raise ReceiptError("result_mismatch", "receipt.result differs from the attested result_bytes")
    if result.tx_id != tx_id:
        raise ReceiptError(
            "other_transaction", f"receipt is for tx {result.tx_id.hex()[:16]}, not {tx_id.hex()[:16]}"
        )
    if cache is not None:
        block = cache.certificate(receipt.header, receipt.certificate)
    else:
        block = verify_certificate(genesis, receipt.header, receipt.certificate)
    header = block.header
    if result.height != header.height:
        raise ReceiptError("other_block", f"result names height {result.height}, block is {header.height}")
    if not merkle.verify(header.tx_root, tx_id, result.index, header.tx_count, receipt.tx_proof):
        raise ReceiptError("bad_tx_proof", f"tx is not leaf {result.index} of the block's tx_root")
    if cache is not None:
        attested = cache.attestations(header.height, block.digest, receipt.attestations)
    else:
        attested = verify_attestations(genesis, header.height, block.digest, receipt.attestations)
    if not merkle.verify(
        attested.results_root, receipt.result_bytes, result.index, header.tx_count, receipt.result_proof
    ):
        raise ReceiptError(
            "bad_result_proof", f"result is not leaf {result.index} of the attested results_root"
        )
    return VerifiedReceipt(
        tx_id=tx_id, result=result, result_bytes=bytes(receipt.result_bytes), block=block, attested=attested
    )


def verify_block(genesis: Genesis, response: api_pb2.GetBlockResponse) -> VerifiedBlock:
    """Verify a served block: certificate, batch against header, results against attestations."""
    cb = response.block
    block = verify_certificate(genesis, cb.header, cb.certificate)
    header = block.header
    envelopes = tuple(bytes(e) for e in cb.batch.envelopes)
    attested: Attested | None = None
    if response.attestations:
        attested = verify_attestations(genesis, header.height, block.digest, response.attestations)
    if not envelopes and not response.results and header.tx_count:  # served without bodies
        return VerifiedBlock(
            block=block, envelopes=(), tx_ids=(), results=(), attested=attested, bodies=False
        )
    if len(envelopes) != header.tx_count:
        raise ReceiptError("bad_batch", f"{len(envelopes)} envelopes, header says {header.tx_count}")
    try:
        tx_ids = tuple(tx_id_of(tx_pb2.Envelope.FromString(e).body) for e in envelopes)
    except DecodeError as exc:
        raise ReceiptError("bad_batch", "an envelope of the batch does not parse") from exc
    if merkle.root(tx_ids) != header.tx_root:
        raise ReceiptError("bad_batch", "the batch's tx ids do not match header.tx_root")
    if batch_hash(envelopes) != header.batch_hash:
        raise ReceiptError("bad_batch", "the batch's envelopes do not match header.batch_hash")
    results: tuple[tx_pb2.TxResult, ...] = tuple(response.results)
    if attested is not None and results:
        leaves = [r.SerializeToString(deterministic=True) for r in results]
        if merkle.root(leaves) != attested.results_root:
            raise ReceiptError("bad_results", "the block's results do not match the attested results_root")
    return VerifiedBlock(block=block, envelopes=envelopes, tx_ids=tx_ids, results=results, attested=attested)
