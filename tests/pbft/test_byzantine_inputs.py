"""Every kind of bad peer input is dropped and counted, never raised, and changes nothing."""

from __future__ import annotations

import hashlib

from node.pbft import wire
from node.pbft.actions import Broadcast
from node.pbft.wire import Checkpoint, Commit, Prepare, PreparedCert, PrePrepare, ViewChange
from tests.pbft.harness import CHAIN, Cluster, request

D = hashlib.sha256(b"some batch").digest()


def _pp(
    c: Cluster, view: int, seq: int, envelopes: tuple[bytes, ...], signer: int | None = None, ts: int = 0
) -> bytes:
    header = wire.build_header(CHAIN, seq, ts, envelopes)
    pp = PrePrepare(view, seq, wire.digest_of(header), header)
    return wire.encode_peer(
        c.sign(c.config_for(0).primary(view) if signer is None else signer, pp), envelopes
    )


def _expect(c: Cluster, i: int, message: bytes, counter: str) -> None:
    r = c.nodes[i].replica
    before = r.counters[counter]
    actions = r.on_message(message)
    assert r.counters[counter] == before + 1, counter
    assert not any(isinstance(a, Broadcast) for a in actions), counter


def test_malformed_and_unauthenticated_messages() -> None:
    c = Cluster(peer_message_bytes_max=4096)
    _expect(c, 1, b"\xff" * 5000, "oversize")
    _expect(c, 1, b"\x0a\x05garbage-not-a-peer-message", "garbage")
    body = wire.encode_body(Prepare(0, 1, D, 7))
    _expect(c, 1, wire.encode_peer(wire.encode_signed(body, 7, bytes(64))), "non_member")
    body = wire.encode_body(Prepare(0, 1, D, 2))
    _expect(c, 1, wire.encode_peer(wire.encode_signed(body, 2, bytes(64))), "bad_signature")
    # Signed by replica 3 with its own key, but claiming to be replica 2's vote.
    _expect(c, 1, wire.encode_peer(c.sign(3, Prepare(0, 1, D, 2))), "bad_signature")
    # A signed body that is not a consensus message.
    _expect(
        c, 1, wire.encode_peer(wire.encode_signed(b"\xff\xff", 2, c.cryptos[2].sign(b"\xff\xff"))), "garbage"
    )


def test_pre_prepare_checks() -> None:
    c = Cluster()
    _, env = request(1)
    _expect(c, 1, _pp(c, 0, 1, (env,), signer=2), "bad_signature")  # not the primary
    _expect(c, 2, _pp(c, 1, 1, (env,)), "wrong_view")
    _expect(c, 1, _pp(c, 0, 9, (env,)), "out_of_window")  # window is 4
    # The header does not commit to the batch that travels with it.
    header = wire.build_header(CHAIN, 1, 0, (env,))
    signed = c.sign(0, PrePrepare(0, 1, wire.digest_of(header), header))
    _expect(c, 1, wire.encode_peer(signed, ()), "bad_batch")
    _expect(c, 1, wire.encode_peer(signed), "missing_batch")
    wrong_digest = c.sign(0, PrePrepare(0, 1, D, header))
    _expect(c, 1, wire.encode_peer(wrong_digest, (env,)), "bad_batch")
    other_chain = wire.build_header("other-chain", 1, 0, (env,))
    signed = c.sign(0, PrePrepare(0, 1, wire.digest_of(other_chain), other_chain))
    _expect(c, 1, wire.encode_peer(signed, (env,)), "bad_batch")


def test_a_block_stamped_far_in_the_future_is_not_prepared() -> None:
    # Regression (ledger review): a faulty primary stamping 2**63-1 would end escrow for good.
    c = Cluster()
    c.tick(1000)
    _, env = request(1)
    skew = c.config_for(1).timestamp_skew_ms_max
    _expect(c, 1, _pp(c, 0, 1, (env,), ts=2**63 - 1), "future_timestamp")
    _expect(c, 1, _pp(c, 0, 1, (env,), ts=1000 + skew + 1), "future_timestamp")
    actions = c.nodes[1].replica.on_message(_pp(c, 0, 1, (env,), ts=1000 + skew))
    assert any(isinstance(a, Broadcast) for a in actions), "a timestamp within the skew is prepared"


def test_equivocating_primary_is_detected_and_not_followed() -> None:
    c = Cluster()
    _, env1 = request(1)
    _, env2 = request(2)
    r = c.nodes[1].replica
    first = r.on_message(_pp(c, 0, 1, (env1,)))
    assert any(isinstance(a, Broadcast) for a in first)  # our prepare
    _expect(c, 1, _pp(c, 0, 1, (env2,)), "equivocation")
    assert r.slots[1].tx_ids == (wire.canonical_envelope(env1)[0],)


def test_vote_checks() -> None:
    c = Cluster()
    _, env = request(1)
    c.nodes[1].replica.on_message(_pp(c, 0, 1, (env,)))
    _expect(c, 1, wire.encode_peer(c.sign(0, Prepare(0, 1, D, 0))), "primary_prepare")
    _expect(c, 1, wire.encode_peer(c.sign(2, Prepare(0, 100, D, 2))), "out_of_window")
    c.nodes[1].replica.on_message(wire.encode_peer(c.sign(2, Commit(0, 1, D, 2))))
    other = hashlib.sha256(b"other").digest()
    _expect(c, 1, wire.encode_peer(c.sign(2, Commit(0, 1, other, 2))), "conflicting_vote")
    # Replica 1 moves to view 1; prepares of view 0 are now useless.
    c.nodes[1].replica._start_view_change(1)
    _expect(c, 1, wire.encode_peer(c.sign(3, Prepare(0, 1, D, 3))), "old_view")


def test_forged_view_change_certificates_are_rejected() -> None:
    c = Cluster()
    header = wire.build_header(CHAIN, 1, 0, ())
    d = wire.digest_of(header)
    pp = c.sign(0, PrePrepare(0, 1, d, header))
    good_prepares = (c.sign(1, Prepare(0, 1, d, 1)), c.sign(2, Prepare(0, 1, d, 2)))
    forged = wire.encode_signed(wire.decode_signed(good_prepares[1])[0], 2, bytes(64))
    certs = {
        "forged prepare signature": PreparedCert(pp, (good_prepares[0], forged), ()),
        "too few prepares": PreparedCert(pp, good_prepares[:1], ()),
        "same replica twice": PreparedCert(pp, (good_prepares[0], good_prepares[0]), ()),
        "primary's own prepare": PreparedCert(pp, (good_prepares[0], c.sign(0, Prepare(0, 1, d, 0))), ()),
        "batch does not match header": PreparedCert(pp, good_prepares, (request(1)[1],)),
    }
    r = c.nodes[3].replica
    for what, cert in certs.items():
        vc = c.sign(2, ViewChange(1, 0, (), (cert,), 2))
        before = r.counters["bad_view_change"]
        r.on_message(wire.encode_peer(vc))
        assert r.counters["bad_view_change"] == before + 1, what
    bad_proof = (c.sign(1, Checkpoint(2, D, 1)),)
    _expect(c, 3, wire.encode_peer(c.sign(2, ViewChange(1, 2, bad_proof, (), 2))), "bad_view_change")
    ok = c.sign(2, ViewChange(1, 0, (), (PreparedCert(pp, good_prepares, ()),), 2))
    r.on_message(wire.encode_peer(ok))
    assert r.counters["bad_view_change"] == len(certs) + 1  # the genuine one is accepted


def test_a_replayed_message_changes_nothing() -> None:
    c = Cluster()
    c.submit(0, 1)
    c.deliver()
    old = [a.message for b in c.nodes[0].batches for a in b if isinstance(a, Broadcast)]
    before = [list(n.executed) for n in c.nodes]
    for m in old * 2:
        for i in (1, 2, 3):
            c.handle(i, c.nodes[i].replica.on_message(m))
    c.deliver()
    assert [list(n.executed) for n in c.nodes] == before


def test_a_batch_is_parsed_only_after_the_signature_verifies_and_only_as_counted() -> None:
    # Issue 16: a message's batch is outside its signature; it used to be decoded first, at ~25x
    # its wire size (8.4 MB of tiny entries cost a node ~200 MB and 7.5 s of its loop).
    from ledger.v1 import consensus_pb2 as cpb

    c = Cluster(peer_message_bytes_max=64 << 20)
    _, env = request(1)
    header = wire.build_header(CHAIN, 1, 0, (env,))
    pp = PrePrepare(0, 1, wire.digest_of(header), header)
    tiny = cpb.Batch(envelopes=[b"x"] * 500_000).SerializeToString()  # 1.5 MB of tiny entries
    forged = cpb.PeerMessage(
        message=cpb.SignedMessage.FromString(wire.encode_signed(wire.encode_body(pp), 0, bytes(64)))
    ).SerializeToString()
    calls: list[int] = []
    real = wire.decode_batch

    def counting(raw: bytes | memoryview, count: int) -> tuple[bytes, ...]:
        calls.append(count)
        return real(raw, count)

    wire.decode_batch = counting
    try:
        _expect(c, 1, forged + b"\x12" + _varint(len(tiny)) + tiny, "bad_signature")
        assert calls == []  # a forged pre-prepare's batch is never looked at
        # Signed by the primary, but its batch holds more than the header counts: refused
        # after counting tx_count + 1 entries, not half a million.
        signed = c.sign(0, pp)
        genuine = cpb.PeerMessage(message=cpb.SignedMessage.FromString(signed)).SerializeToString()
        _expect(c, 1, genuine + b"\x12" + _varint(len(tiny)) + tiny, "bad_batch")
        assert calls == [1]
    finally:
        wire.decode_batch = real
    # The same pre-prepare with its real batch is accepted.
    assert c.nodes[1].replica.on_message(wire.encode_peer(c.sign(0, pp), (env,)))


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def test_stale_messages_are_counted_but_not_charged_to_their_sender() -> None:
    # The driver penalizes a connection by ``rejected``: what a lagging honest peer sends (old
    # views, outside the window) must not count there; forged or malformed input must.
    c = Cluster()
    r = c.nodes[1].replica
    before = r.rejected
    _expect(c, 1, wire.encode_peer(c.sign(2, Prepare(0, 100, D, 2))), "out_of_window")
    r._start_view_change(1)
    _expect(c, 1, wire.encode_peer(c.sign(3, Prepare(0, 1, D, 3))), "old_view")
    assert r.rejected == before
    body = wire.encode_body(Prepare(1, 1, D, 2))
    _expect(c, 1, wire.encode_peer(wire.encode_signed(body, 2, bytes(64))), "bad_signature")
    _expect(c, 1, b"\x0a\x05garbage-not-a-peer-message", "garbage")
    assert r.rejected == before + 2
