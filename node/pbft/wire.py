"""The one place node/pbft touches protobuf: PeerMessage / SignedMessage / ConsensusMessage bytes
<-> frozen dataclasses, block headers and batches. Signatures are checked on the received body
bytes; nothing is re-serialized to verify. ``batch_hash`` and ``digest_of`` are ledger.block's,
re-exported: clients compute the same bytes with the same functions."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import Message

from ledger import merkle, wirescan
from ledger.block import batch_hash as batch_hash
from ledger.block import digest_of as digest_of
from ledger.crypto import tx_id_of
from ledger.v1 import consensus_pb2 as cpb
from ledger.v1 import tx_pb2 as txpb

HASH_BYTES = 32


class WireError(Exception):
    """Peer bytes that do not decode into a well-formed message."""


# --- messages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrePrepare:
    view: int
    sequence: int
    digest: bytes
    header: bytes


@dataclass(frozen=True)
class Prepare:
    view: int
    sequence: int
    digest: bytes
    replica: int


@dataclass(frozen=True)
class Commit:
    view: int
    sequence: int
    digest: bytes
    replica: int


@dataclass(frozen=True)
class Checkpoint:
    sequence: int
    state_root: bytes
    replica: int
    # The state tree's root at this sequence (ledger/statetree.py): empty from a state machine
    # without one (the simulator's echo app); the node always sends one.
    tree_root: bytes = b""

    @property
    def roots(self) -> tuple[bytes, bytes]:
        """What 2f+1 checkpoints must agree on to be stable."""
        return self.state_root, self.tree_root


@dataclass(frozen=True)
class PreparedCert:
    pre_prepare: bytes  # serialized SignedMessage
    prepares: tuple[bytes, ...]  # serialized SignedMessages
    envelopes: tuple[bytes, ...]


@dataclass(frozen=True)
class ViewChange:
    new_view: int
    stable_sequence: int
    checkpoint_proof: tuple[bytes, ...]  # serialized SignedMessages
    prepared: tuple[PreparedCert, ...]
    replica: int


@dataclass(frozen=True)
class NewView:
    view: int
    view_changes: tuple[bytes, ...]
    pre_prepares: tuple[bytes, ...]
    batches: tuple[tuple[bytes, ...], ...]


@dataclass(frozen=True)
class Attestation:
    sequence: int
    digest: bytes
    results_root: bytes
    state_root: bytes
    replica: int


Body = PrePrepare | Prepare | Commit | Checkpoint | ViewChange | NewView | Attestation


@dataclass(frozen=True)
class Signed:
    """A SignedMessage whose body parsed; `raw` is its exact serialized form (for certificates)."""

    raw: bytes
    body: bytes
    signer: int
    signature: bytes
    msg: Body


@dataclass(frozen=True)
class Header:
    chain_id: str
    height: int
    timestamp_ms: int
    tx_count: int
    tx_root: bytes
    batch_hash: bytes


# --- decoding ------------------------------------------------------------------------------


def _parse(cls: type[Message], data: bytes) -> Message:
    pb = cls()
    try:
        pb.ParseFromString(data)
    except Exception as exc:  # DecodeError and friends: garbage from a peer
        raise WireError(f"not a {cls.__name__}") from exc
    return pb


def _hash(value: bytes, what: str) -> bytes:
    if len(value) != HASH_BYTES:
        raise WireError(f"{what}: expected {HASH_BYTES} bytes")
    return bytes(value)


def cert_from_pb(pc: cpb.PreparedCertificate) -> PreparedCert:
    return PreparedCert(
        pre_prepare=pc.pre_prepare.SerializeToString(),
        prepares=tuple(p.SerializeToString() for p in pc.prepares),
        envelopes=tuple(bytes(e) for e in pc.batch.envelopes),
    )


def decode_body(body: bytes) -> Body:
    cm = _parse(cpb.ConsensusMessage, body)
    assert isinstance(cm, cpb.ConsensusMessage)
    kind = cm.WhichOneof("kind")
    if kind == "pre_prepare":
        m = cm.pre_prepare
        return PrePrepare(m.view, m.sequence, _hash(m.digest, "digest"), bytes(m.header))
    if kind == "prepare":
        p = cm.prepare
        return Prepare(p.view, p.sequence, _hash(p.digest, "digest"), p.replica)
    if kind == "commit":
        c = cm.commit
        return Commit(c.view, c.sequence, _hash(c.digest, "digest"), c.replica)
    if kind == "checkpoint":
        k = cm.checkpoint
        tree_root = _hash(k.tree_root, "tree_root") if k.tree_root else b""
        return Checkpoint(k.sequence, _hash(k.state_root, "state_root"), k.replica, tree_root)
    if kind == "view_change":
        v = cm.view_change
        return ViewChange(
            new_view=v.new_view,
            stable_sequence=v.stable_sequence,
            checkpoint_proof=tuple(s.SerializeToString() for s in v.checkpoint_proof),
            prepared=tuple(cert_from_pb(pc) for pc in v.prepared),
            replica=v.replica,
        )
    if kind == "new_view":
        nv = cm.new_view
        return NewView(
            view=nv.view,
            view_changes=tuple(s.SerializeToString() for s in nv.view_changes),
            pre_prepares=tuple(s.SerializeToString() for s in nv.pre_prepares),
            batches=tuple(tuple(bytes(e) for e in b.envelopes) for b in nv.batches),
        )
    if kind == "attestation":
        a = cm.attestation
        return Attestation(
            a.sequence,
            _hash(a.digest, "digest"),
            _hash(a.results_root, "results_root"),
            _hash(a.state_root, "state_root"),
            a.replica,
        )
    raise WireError("empty consensus message")


def decode_signed(raw: bytes) -> tuple[bytes, int, bytes]:
    """(body, signer, signature) of a serialized SignedMessage; nothing verified yet."""
    sm = _parse(cpb.SignedMessage, raw)
    assert isinstance(sm, cpb.SignedMessage)
    return bytes(sm.body), sm.signer, bytes(sm.signature)


def decode_peer(raw: bytes) -> tuple[bytes, memoryview | None]:
    """(SignedMessage, serialized Batch or None) of a serialized PeerMessage, both exactly as
    received. The batch is not covered by the signature: it stays unparsed until the signature
    verifies and the signed header says how many envelopes it holds (decode_batch)."""
    view = memoryview(raw)  # slices of it are not copies: a large batch is copied only once split
    try:
        fields = wirescan.singular_fields(view)
    except wirescan.ScanError as exc:
        raise WireError(f"not a PeerMessage: {exc}") from exc
    signed = fields.get(1)
    if signed is None:
        raise WireError("peer message without a signed message")
    batch = fields.get(2)
    return bytes(signed), None if batch is None else memoryview(batch)


def decode_batch(raw: bytes | memoryview, count: int) -> tuple[bytes, ...]:
    """The envelopes of a serialized Batch that must hold exactly ``count`` of them (the signed
    header's tx_count): counting stops past it, so a sender cannot make us build more."""
    try:
        if len(raw) <= wirescan.PARSE_DIRECT_BYTES_MAX:
            envelopes = [bytes(e) for e in _parse(cpb.Batch, bytes(raw)).envelopes]  # type: ignore[attr-defined]
        else:
            envelopes = [bytes(e) for e in wirescan.repeated_bytes(memoryview(raw), 1, count)]
    except wirescan.ScanError as exc:
        raise WireError(f"not a batch of {count}: {exc}") from exc
    if len(envelopes) != count:
        raise WireError(f"batch holds {len(envelopes)} envelopes, the header says {count}")
    return tuple(envelopes)


def decode_header(raw: bytes) -> Header:
    h = _parse(txpb.BlockHeader, raw)
    assert isinstance(h, txpb.BlockHeader)
    return Header(h.chain_id, h.height, h.timestamp_ms, h.tx_count, bytes(h.tx_root), bytes(h.batch_hash))


def canonical_envelope(raw: bytes) -> tuple[bytes, bytes]:
    """(tx_id, canonical bytes) of a client envelope. Batches carry each envelope's exact
    bytes; normalizing them once at admission makes two encodings of one copy (field order,
    unknown fields) a single request, so they cannot both be proposed."""
    env = _parse(txpb.Envelope, raw)
    assert isinstance(env, txpb.Envelope)
    return tx_id_of(env.body), env.SerializeToString()


def request_key(canonical: bytes) -> bytes:
    """Identifies one exact copy of a transaction (body and signatures), unlike tx_id."""
    return hashlib.sha256(canonical).digest()


def decode_certified_block(raw: bytes) -> tuple[bytes, tuple[bytes, ...], tuple[bytes, ...]]:
    """(header bytes, envelopes, commit SignedMessages) of a serialized CertifiedBlock."""
    cb = _parse(cpb.CertifiedBlock, raw)
    assert isinstance(cb, cpb.CertifiedBlock)
    return (
        bytes(cb.header),
        tuple(bytes(e) for e in cb.batch.envelopes),
        tuple(c.SerializeToString() for c in cb.certificate.commits),
    )


# --- encoding ------------------------------------------------------------------------------


def _batch(envelopes: Sequence[bytes]) -> cpb.Batch:
    return cpb.Batch(envelopes=envelopes)


def cert_to_pb(cert: PreparedCert, out: cpb.PreparedCertificate) -> None:
    out.pre_prepare.MergeFromString(cert.pre_prepare)
    for p in cert.prepares:
        out.prepares.add().MergeFromString(p)
    out.batch.CopyFrom(_batch(cert.envelopes))


def encode_body(msg: Body) -> bytes:
    cm = cpb.ConsensusMessage()
    if isinstance(msg, PrePrepare):
        cm.pre_prepare.CopyFrom(
            cpb.PrePrepare(view=msg.view, sequence=msg.sequence, digest=msg.digest, header=msg.header)
        )
    elif isinstance(msg, Prepare):
        cm.prepare.CopyFrom(
            cpb.Prepare(view=msg.view, sequence=msg.sequence, digest=msg.digest, replica=msg.replica)
        )
    elif isinstance(msg, Commit):
        cm.commit.CopyFrom(
            cpb.Commit(view=msg.view, sequence=msg.sequence, digest=msg.digest, replica=msg.replica)
        )
    elif isinstance(msg, Checkpoint):
        cm.checkpoint.CopyFrom(
            cpb.Checkpoint(
                sequence=msg.sequence, state_root=msg.state_root, replica=msg.replica, tree_root=msg.tree_root
            )
        )
    elif isinstance(msg, ViewChange):
        vc = cm.view_change
        vc.new_view = msg.new_view
        vc.stable_sequence = msg.stable_sequence
        vc.replica = msg.replica
        for s in msg.checkpoint_proof:
            vc.checkpoint_proof.add().MergeFromString(s)
        for cert in msg.prepared:
            cert_to_pb(cert, vc.prepared.add())
    elif isinstance(msg, NewView):
        nv = cm.new_view
        nv.view = msg.view
        for s in msg.view_changes:
            nv.view_changes.add().MergeFromString(s)
        for s in msg.pre_prepares:
            nv.pre_prepares.add().MergeFromString(s)
        for b in msg.batches:
            nv.batches.add().CopyFrom(_batch(b))
    else:
        cm.attestation.CopyFrom(
            cpb.Attestation(
                sequence=msg.sequence,
                digest=msg.digest,
                results_root=msg.results_root,
                state_root=msg.state_root,
                replica=msg.replica,
            )
        )
    return cm.SerializeToString()


def encode_signed(body: bytes, signer: int, signature: bytes) -> bytes:
    return cpb.SignedMessage(body=body, signer=signer, signature=signature).SerializeToString()


def encode_peer(signed_raw: bytes, envelopes: Sequence[bytes] | None = None) -> bytes:
    pm = cpb.PeerMessage()
    pm.message.MergeFromString(signed_raw)
    if envelopes is not None:
        pm.batch.CopyFrom(_batch(envelopes))
    return pm.SerializeToString()


def encode_certified_block(header: bytes, envelopes: Sequence[bytes], commits: Sequence[bytes]) -> bytes:
    cb = cpb.CertifiedBlock(header=header, batch=_batch(envelopes))
    for c in commits:
        cb.certificate.commits.add().MergeFromString(c)
    return cb.SerializeToString()


# --- journal records (consensus-internal, never on the wire) -----------------------------


def encode_signed_list(items: Sequence[bytes]) -> bytes:
    """A list of SignedMessages, in the CommitCertificate shape (repeated SignedMessage)."""
    cc = cpb.CommitCertificate()
    for raw in items:
        cc.commits.add().MergeFromString(raw)
    return cc.SerializeToString()


def decode_signed_list(raw: bytes) -> tuple[bytes, ...]:
    cc = _parse(cpb.CommitCertificate, raw)
    assert isinstance(cc, cpb.CommitCertificate)
    return tuple(s.SerializeToString() for s in cc.commits)


def encode_cert(cert: PreparedCert) -> bytes:
    pc = cpb.PreparedCertificate()
    cert_to_pb(cert, pc)
    return pc.SerializeToString()


def decode_cert(raw: bytes) -> PreparedCert:
    pc = _parse(cpb.PreparedCertificate, raw)
    assert isinstance(pc, cpb.PreparedCertificate)
    return cert_from_pb(pc)


# --- blocks --------------------------------------------------------------------------------


def tx_ids_of(envelopes: Sequence[bytes]) -> tuple[bytes, ...]:
    """Each envelope's tx_id (WireError if one does not parse)."""
    ids = []
    for raw in envelopes:
        env = _parse(txpb.Envelope, raw)
        assert isinstance(env, txpb.Envelope)
        ids.append(tx_id_of(env.body))
    return tuple(ids)


def build_header(
    chain_id: str,
    height: int,
    timestamp_ms: int,
    envelopes: Sequence[bytes],
    tx_ids: Sequence[bytes] | None = None,
) -> bytes:
    """``tx_ids``: tx_ids_of(envelopes), when the caller has it already."""
    ids = tx_ids_of(envelopes) if tx_ids is None else tx_ids
    return txpb.BlockHeader(
        chain_id=chain_id,
        height=height,
        timestamp_ms=timestamp_ms,
        tx_count=len(envelopes),
        tx_root=merkle.root(ids),
        batch_hash=batch_hash(envelopes),
    ).SerializeToString()


def null_header(chain_id: str, height: int) -> bytes:
    """The gap filler a new view proposes: no transactions, timestamp 0 (consensus time is
    max(previous, 0), so it never moves the clock)."""
    return build_header(chain_id, height, 0, ())


def header_matches(
    header: Header,
    chain_id: str,
    height: int,
    envelopes: Sequence[bytes],
    tx_ids: Sequence[bytes] | None = None,
) -> bool:
    """True when the header names this chain and height and commits to exactly this batch.
    ``tx_ids``: tx_ids_of(envelopes), when the caller has it already."""
    if header.chain_id != chain_id or header.height != height or header.tx_count != len(envelopes):
        return False
    if header.batch_hash != batch_hash(envelopes):
        return False
    try:
        return header.tx_root == merkle.root(tx_ids_of(envelopes) if tx_ids is None else tx_ids)
    except WireError:
        return False
