"""Lying replicas: each wraps an honest Replica (so it knows what to lie about) and rewrites or
adds to what it sends. Every lie is signed with the liar's own key only."""

from __future__ import annotations

import hashlib
import random

from node.pbft import wire
from node.pbft.actions import ConsensusCrypto
from node.pbft.replica import Replica
from node.pbft.wire import Commit, Prepare, PreparedCert, PrePrepare, Signed, ViewChange


def _sign(crypto: ConsensusCrypto, signer: int, msg: wire.Body) -> bytes:
    body = wire.encode_body(msg)
    return wire.encode_signed(body, signer, crypto.sign(body))


def _decode(peer: bytes) -> tuple[wire.Body, tuple[bytes, ...] | None] | None:
    try:
        signed, batch = wire.decode_peer(peer)
        body, _, _ = wire.decode_signed(signed)
        msg = wire.decode_body(body)
        if isinstance(msg, PrePrepare) and batch is not None:
            return msg, wire.decode_batch(batch, wire.decode_header(msg.header).tx_count)
        return msg, None
    except wire.WireError:
        return None


def rewrite(
    behaviour: str, replica: Replica, crypto: ConsensusCrypto, to: int, message: bytes, rng: random.Random
) -> list[bytes]:
    """What a liar actually sends to `to` instead of `message`."""
    if behaviour == "silent":
        return []
    if behaviour == "collude":
        return [_collude(replica, crypto, to, message)]
    if behaviour != "equivocate":
        return [message]
    decoded = _decode(message)
    if decoded is None:
        return [message]
    msg, batch = decoded
    me = replica.id
    if isinstance(msg, PrePrepare) and batch is not None and to % 2 == 1:
        # Same view and sequence, another batch (drop the last request), for half the peers.
        alt = batch[:-1]
        header = wire.build_header(replica.cfg.chain_id, msg.sequence, 1 + msg.sequence, alt)
        pp = PrePrepare(msg.view, msg.sequence, wire.digest_of(header), header)
        lie = wire.encode_peer(_sign(crypto, me, pp), alt)
        return [lie, message] if to == 1 else [lie]  # replica 1 sees both versions
    if isinstance(msg, Prepare | Commit) and to % 2 == 1:
        fake = hashlib.sha256(b"lie" + msg.digest).digest()
        cls = type(msg)
        lie = wire.encode_peer(_sign(crypto, me, cls(msg.view, msg.sequence, fake, me)))
        return [lie, message] if rng.random() < 0.5 else [lie]
    return [message]


def _alternative(replica: Replica, sequence: int, envelopes: tuple[bytes, ...]) -> tuple[bytes, bytes]:
    """The other batch colluders show the last replica: (header, digest), derivable by all of them."""
    alt = envelopes[:-1]
    header = wire.build_header(replica.cfg.chain_id, sequence, 1 + sequence, alt)
    return header, wire.digest_of(header)


def _collude(replica: Replica, crypto: ConsensusCrypto, to: int, message: bytes) -> bytes:
    """f+1 liars together (beyond what PBFT tolerates): the last replica is shown another batch
    and every colluder's votes for it, so it can commit something the others did not."""
    decoded = _decode(message)
    if decoded is None or to != replica.cfg.n - 1:
        return message
    msg, batch = decoded
    me = replica.id
    if isinstance(msg, PrePrepare) and batch is not None:
        header, digest = _alternative(replica, msg.sequence, batch)
        pp = PrePrepare(msg.view, msg.sequence, digest, header)
        return wire.encode_peer(_sign(crypto, me, pp), batch[:-1])
    if isinstance(msg, Prepare | Commit):
        slot = replica.slots.get(msg.sequence)
        if slot is None or slot.pp is None:
            return message
        _, digest = _alternative(replica, msg.sequence, slot.envelopes)
        return wire.encode_peer(_sign(crypto, me, type(msg)(msg.view, msg.sequence, digest, me)))
    return message


def extra(
    behaviour: str, replica: Replica, crypto: ConsensusCrypto, rng: random.Random, heard: list[bytes]
) -> list[tuple[int | None, bytes]]:
    """Unprompted lies on a tick: (recipient or None for everyone, message)."""
    me = replica.id
    n = replica.cfg.n
    out: list[tuple[int | None, bytes]] = []
    if behaviour == "replay" and heard and rng.random() < 0.3:
        for _ in range(rng.randint(1, 4)):
            out.append((rng.randrange(n), rng.choice(heard)))
    if behaviour == "pusher" and rng.random() < 0.1:
        # A valid VIEW-CHANGE for the next view, over and over, alone: the correct replicas
        # follow a replica alone ahead after two timeouts (views.py), so it makes them change
        # views, at most once per two timeouts.
        vc = ViewChange(replica.view + 1, replica.stable_seq, replica.stable_proof, (), me)
        out.append((None, wire.encode_peer(_sign(crypto, me, vc))))
    if behaviour != "forge" or rng.random() > 0.3:
        return out
    seq = replica.next_execute + rng.randint(0, 2)
    view = replica.view
    digest = hashlib.sha256(rng.randbytes(8)).digest()
    other = (me + 1) % n
    kind = rng.randrange(7)
    if kind == 0:  # a conflicting but validly signed vote
        out.append((None, wire.encode_peer(_sign(crypto, me, Prepare(view, seq, digest, me)))))
        out.append((None, wire.encode_peer(_sign(crypto, me, Commit(view, seq, digest, me)))))
    elif kind == 1:  # a vote in another replica's name (our key, their id): bad signature
        out.append((None, wire.encode_peer(_sign(crypto, other, Commit(view, seq, digest, other)))))
    elif kind == 2:  # garbage bytes
        out.append((None, rng.randbytes(rng.randint(0, 200))))
    elif kind == 3:  # a view change carrying a forged prepared certificate
        header = wire.build_header(replica.cfg.chain_id, replica.stable_seq + 1, 0, ())
        d = wire.digest_of(header)
        primary = replica.cfg.primary(view)
        pp = _sign(crypto, primary, PrePrepare(view, replica.stable_seq + 1, d, header))
        prepares = tuple(
            _sign(crypto, r, Prepare(view, replica.stable_seq + 1, d, r)) for r in range(n) if r != primary
        )
        cert = PreparedCert(pp, prepares[: 2 * replica.cfg.f], ())
        vc = ViewChange(view + 1, replica.stable_seq, replica.stable_proof, (cert,), me)
        out.append((None, wire.encode_peer(_sign(crypto, me, vc))))
    elif kind == 4:  # a pre-prepare from a non-primary
        header = wire.build_header(replica.cfg.chain_id, seq, 0, ())
        out.append(
            (
                None,
                wire.encode_peer(
                    _sign(crypto, me, PrePrepare(view, seq, wire.digest_of(header), header)), ()
                ),
            )
        )
    elif kind == 5:  # votes far outside the window and for old views
        far = replica.stable_seq + 10 * replica.cfg.log_window
        out.append((None, wire.encode_peer(_sign(crypto, me, Commit(view, far, digest, me)))))
        if view > 0:
            out.append((None, wire.encode_peer(_sign(crypto, me, Prepare(view - 1, seq, digest, me)))))
    else:  # a checkpoint with a wrong state root, or with the right one and a wrong tree root
        own = replica._own_checkpoint
        if own is not None and isinstance(own.msg, wire.Checkpoint) and own.msg.sequence > replica.stable_seq:
            lie = wire.Checkpoint(own.msg.sequence, own.msg.state_root, me, digest)
        else:
            k = replica.cfg.checkpoint_interval
            lie = wire.Checkpoint((replica.last_executed // k + 1) * k, digest, me)
        out.append((None, wire.encode_peer(_sign(crypto, me, lie))))
    return out


def tamper_blocks(blocks: list[bytes], rng: random.Random) -> list[bytes]:
    """A liar serving state transfer: swap a block's batch or drop a commit."""
    if not blocks:
        return blocks
    i = rng.randrange(len(blocks))
    header, envelopes, commits = wire.decode_certified_block(blocks[i])
    if envelopes and rng.random() < 0.5:
        bad = wire.encode_certified_block(header, envelopes[:-1], commits)
    else:
        bad = wire.encode_certified_block(header, envelopes, commits[:-1])
    return [*blocks[:i], bad, *blocks[i + 1 :]]


def remember(heard: list[bytes], message: bytes, rng: random.Random) -> None:
    if len(heard) < 300:
        heard.append(message)
    else:
        heard[rng.randrange(300)] = message


__all__ = ["Signed", "extra", "remember", "rewrite", "tamper_blocks"]
