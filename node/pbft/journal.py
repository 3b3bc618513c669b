"""The consensus journal: what a replica persists before it sends, under prefix b"j/", and how
those records decode on restart. A replica rebuilt from them has the view it last entered, every
pre-prepare it accepted (so it cannot accept a different one for the same view and sequence),
its own prepares, commits, prepared certificates, checkpoints and latest view-change: enough
never to cast a vote that conflicts with one it cast before the crash."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from node.pbft import wire

PREFIX = b"j/"
VIEW = b"j/view"  # 8-byte view + 1 byte in-view-change flag
STABLE = b"j/stable"  # CommitCertificate-shaped list of the 2f+1 signed checkpoints
OWN_VIEW_CHANGE = b"j/vc"  # own latest VIEW-CHANGE (SignedMessage)
NEW_VIEW = b"j/nv"  # as primary: the NEW-VIEW (PeerMessage) that opened the current view
PRE_PREPARE = b"j/pp/"  # + seq: accepted pre-prepare with batch (PeerMessage)
PREPARE = b"j/pr/"  # + seq: own prepare (SignedMessage)
COMMIT = b"j/cm/"  # + seq: own commit (SignedMessage)
CERT = b"j/pc/"  # + seq: own prepared certificate (PreparedCertificate)
CHECKPOINT = b"j/ck/"  # + seq: own checkpoint (SignedMessage)

PER_SEQUENCE = (PRE_PREPARE, PREPARE, COMMIT, CERT)


def seq_key(prefix: bytes, sequence: int) -> bytes:
    return prefix + sequence.to_bytes(8, "big")


def encode_view(view: int, in_view_change: bool) -> bytes:
    return view.to_bytes(8, "big") + (b"\x01" if in_view_change else b"\x00")


encode_signed_list = wire.encode_signed_list
encode_cert = wire.encode_cert


@dataclass
class Restored:
    view: int = 0
    in_view_change: bool = False
    stable_proof: tuple[bytes, ...] = ()
    own_view_change: bytes | None = None
    new_view: bytes | None = None
    pre_prepares: dict[int, bytes] = field(default_factory=dict)
    prepares: dict[int, bytes] = field(default_factory=dict)
    commits: dict[int, bytes] = field(default_factory=dict)
    certs: dict[int, wire.PreparedCert] = field(default_factory=dict)
    checkpoints: dict[int, bytes] = field(default_factory=dict)


def restore(journal: Mapping[bytes, bytes]) -> Restored:
    """Decode our own records. They were written by this code, so a record that does not decode
    is a broken invariant (disk corruption or a bug), not peer input: assert."""
    r = Restored()
    for key, value in journal.items():
        if not key.startswith(PREFIX):
            continue
        if key == VIEW:
            assert len(value) == 9, "corrupt view record"
            r.view = int.from_bytes(value[:8], "big")
            r.in_view_change = value[8] == 1
        elif key == STABLE:
            r.stable_proof = wire.decode_signed_list(value)
        elif key == OWN_VIEW_CHANGE:
            r.own_view_change = value
        elif key == NEW_VIEW:
            r.new_view = value
        else:
            for prefix, target in (
                (PRE_PREPARE, r.pre_prepares),
                (PREPARE, r.prepares),
                (COMMIT, r.commits),
                (CHECKPOINT, r.checkpoints),
            ):
                if key.startswith(prefix) and len(key) == len(prefix) + 8:
                    target[int.from_bytes(key[len(prefix) :], "big")] = value
                    break
            else:
                if key.startswith(CERT) and len(key) == len(CERT) + 8:
                    r.certs[int.from_bytes(key[len(CERT) :], "big")] = wire.decode_cert(value)
                else:
                    raise AssertionError(f"unknown journal record {key!r}")
    return r
