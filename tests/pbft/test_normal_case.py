"""Normal case: batching, three phases, execution in order, certificates, attestations."""

from __future__ import annotations

from ledger import merkle
from node.config import NodeLimits
from node.pbft import wire
from node.pbft.actions import Broadcast, Execute, ForwardRequests, Persist
from node.pbft.journal import COMMIT, PRE_PREPARE, PREPARE
from node.pbft.verify import Verifier
from node.pbft.wire import Commit, Prepare, PrePrepare
from tests.pbft.harness import CHAIN, Cluster, body_of, request


def test_one_request_executes_everywhere_with_a_valid_certificate() -> None:
    c = Cluster()
    tx_id = c.submit(0, 1)
    c.deliver()
    for i in range(4):
        ex = c.nodes[i].executed
        assert [e.sequence for e in ex] == [1]
        assert ex[0].tx_ids == (tx_id,)
    e = c.nodes[2].executed[0]
    header = wire.decode_header(e.header)
    assert (header.chain_id, header.height, header.tx_count) == (CHAIN, 1, 1)
    assert header.tx_root == merkle.root([tx_id])
    assert header.batch_hash == wire.batch_hash(e.envelopes)
    verifier = Verifier(c.config_for(0), c.cryptos[0])
    assert verifier.commit_certificate(1, wire.digest_of(e.header), e.certificate)
    assert len(e.certificate) == 3
    assert not verifier.commit_certificate(1, wire.digest_of(e.header), e.certificate[:2])


def test_backup_forwards_to_primary_and_holds_the_request() -> None:
    c = Cluster()
    tx_id, env = request(7)
    actions = c.nodes[2].replica.on_request(tx_id, env)
    assert actions == [ForwardRequests(0, (env,))]
    assert tx_id in c.nodes[2].replica.pending
    c.handle(2, actions)
    c.deliver()
    assert all(n.executed and n.executed[0].tx_ids == (tx_id,) for n in c.nodes)
    assert tx_id not in c.nodes[2].replica.pending


def test_batches_fill_up_to_the_limit_then_wait_for_the_delay() -> None:
    c = Cluster(batch_size_max=2, batch_delay_ms=30)
    c.tick(10)
    for i in range(3):
        c.submit(0, i)
    c.deliver()
    assert [len(e.envelopes) for e in c.nodes[1].executed] == [2]
    c.tick(10)
    assert len(c.nodes[1].executed) == 1  # one request waits for the batch delay
    c.tick(30)
    assert [len(e.envelopes) for e in c.nodes[1].executed] == [2, 1]


def test_batch_delay_grows_with_the_arrival_rate_between_its_bounds() -> None:
    cfg = NodeLimits(
        batch_size_max=500, batch_delay_ms=20, batch_delay_max_ms=100, batch_delay_per_tps_us=100
    ).replica_config(4, 1, 0, "c")
    # 2 requests in 20 ms (100 tx/s): the 10 ms the rate asks for is under the floor.
    assert not cfg.batch_ready(2, 19) and cfg.batch_ready(2, 20)
    # 64 requests in 60 ms (~1,070 tx/s): wait until age^2 >= 64 * 100, i.e. 80 ms.
    assert not cfg.batch_ready(64, 60) and not cfg.batch_ready(64, 79) and cfg.batch_ready(64, 80)
    # 400 in 100 ms (4,000 tx/s): the rate would ask for 400 ms; the ceiling says 100.
    assert not cfg.batch_ready(400, 99) and cfg.batch_ready(400, 100)
    assert cfg.batch_ready(500, 0)  # full: at once
    fixed = NodeLimits(batch_delay_ms=30, batch_delay_per_tps_us=0).replica_config(4, 1, 0, "c")
    assert not fixed.batch_ready(60, 29) and fixed.batch_ready(60, 30)  # per_tps 0: a fixed delay


def test_a_burst_waits_longer_for_company_than_a_trickle() -> None:
    c = Cluster(batch_size_max=100, batch_delay_ms=20, batch_delay_max_ms=100, batch_delay_per_tps_us=100)
    c.tick(10)
    c.submit(0, 0)
    c.tick(20)  # one request, 20 ms: proposed at the floor
    c.deliver()
    assert [len(e.envelopes) for e in c.nodes[1].executed] == [1]
    for i in range(1, 51):
        c.submit(0, i)  # 50 requests at once: about age^2 >= 50 * 100, ~71 ms
    c.tick(40)
    c.deliver()
    assert len(c.nodes[1].executed) == 1, "a burst is not proposed at the floor"
    for i in range(51, 61):
        c.submit(0, i)
    c.tick(40)  # 80 ms since the burst: 80^2 >= 60 * 100
    c.deliver()
    assert [len(e.envelopes) for e in c.nodes[1].executed] == [1, 60]


def test_execution_is_in_sequence_order_even_when_commits_arrive_out_of_order() -> None:
    c = Cluster(checkpoint_interval=4, log_window=8)  # no checkpoint: no state transfer here
    held: list[tuple[int, int, str, bytes]] = []

    def hold_seq1_commits(src: int, dst: int, msg: bytes) -> bool:
        m = body_of(msg)
        if isinstance(m, Commit) and m.sequence == 1 and dst == 3:
            held.append((src, dst, "msg", msg))
            return True
        return False

    c.drop = hold_seq1_commits
    c.submit(0, 1)
    c.submit(0, 2)
    c.deliver()
    assert c.nodes[3].executed == []  # seq 2 committed but waits for seq 1
    c.drop = lambda s, d, m: False
    c.queue.extend(held)
    c.deliver()
    assert [e.sequence for e in c.nodes[3].executed] == [1, 2]
    assert c.executed_digests(3) == c.executed_digests(0)


def test_persist_comes_before_every_send_that_depends_on_it() -> None:
    c = Cluster()
    for i in range(5):
        c.submit(0, i)
    c.deliver()
    checked = 0
    for node in c.nodes:
        for batch in node.batches:
            persisted: set[bytes] = set()
            for a in batch:
                if isinstance(a, Persist):
                    persisted.add(a.key)
                elif isinstance(a, Broadcast):
                    m = body_of(a.message)
                    prefix = {PrePrepare: PRE_PREPARE, Prepare: PREPARE, Commit: COMMIT}.get(type(m))
                    if prefix is not None and isinstance(m, PrePrepare | Prepare | Commit):
                        assert prefix + m.sequence.to_bytes(8, "big") in persisted
                        checked += 1
    assert checked >= 5 * (1 + 3 + 4)  # every pre-prepare, prepare and commit was checked


def test_attested_after_f_plus_one_matching_attestations() -> None:
    c = Cluster()
    c.submit(0, 1)
    c.deliver()
    for node in c.nodes:
        assert [a.sequence for a in node.attested] == [1]
        assert len(node.attested[0].attestations) == 2


def test_duplicate_request_after_execution_is_ignored() -> None:
    c = Cluster()
    c.submit(0, 1)
    c.deliver()
    tx_id, env = request(1)
    assert c.nodes[0].replica.on_request(tx_id, env) == []
    assert c.nodes[1].replica.on_request(tx_id, env) == []


def test_pending_limit_rejects_and_counts() -> None:
    c = Cluster(pending_requests_max=2, batch_size_max=10, batch_delay_ms=1000)
    for i in range(3):
        c.submit(1, i)
    r = c.nodes[1].replica
    assert len(r.pending) == 2
    assert r.counters["pending_full"] == 1


def test_execute_actions_are_contiguous() -> None:
    c = Cluster()
    for i in range(6):
        c.submit(0, i)
    c.deliver()
    for node in c.nodes:
        seqs = [a.sequence for b in node.batches for a in b if isinstance(a, Execute)]
        assert seqs == list(range(1, 7))


def _copy(i: int, signature: bytes) -> tuple[bytes, bytes]:
    from ledger.v1 import tx_pb2

    env = tx_pb2.Envelope()
    env.ParseFromString(request(i)[1])
    env.signatures.add(public_key=bytes(32), signature=signature)
    return wire.canonical_envelope(env.SerializeToString())


def test_a_strangers_copy_does_not_block_the_genuine_one_after_it_executed() -> None:
    """Only the app knows whether an executed copy was authorized (docs/ARCHITECTURE.md: bad
    or missing signatures do not consume the tx_id), so another copy must still execute."""
    c = Cluster()
    tx_id, stranger = _copy(1, b"s" * 64)
    c.handle(0, c.nodes[0].replica.on_request(tx_id, stranger))
    c.deliver()
    same_tx, genuine = _copy(1, b"g" * 64)
    assert same_tx == tx_id
    assert c.nodes[0].replica.on_request(tx_id, stranger) == []  # the exact copy again: dropped
    c.handle(0, c.nodes[0].replica.on_request(tx_id, genuine))
    c.deliver()
    for node in c.nodes:
        assert [e.envelopes for e in node.executed] == [(stranger,), (genuine,)]


def test_copies_held_at_the_same_time_both_execute() -> None:
    c = Cluster(batch_size_max=4, batch_delay_ms=50)
    tx_id, stranger = _copy(2, b"s" * 64)
    _, genuine = _copy(2, b"g" * 64)
    for env in (stranger, genuine):
        c.handle(0, c.nodes[0].replica.on_request(tx_id, env))
    assert c.nodes[0].replica.pending[tx_id] == stranger
    c.run_for(200)
    executed = [e.envelopes for e in c.nodes[2].executed]
    assert executed == [(stranger,), (genuine,)]
    assert tx_id not in c.nodes[0].replica.pending


def test_a_peer_whose_link_comes_up_gets_our_votes_at_once() -> None:
    """Regression (chaos seed 303, round 22): a replica back from an outage waited for the next
    retransmit (up to retransmit_ms) for the votes on sequences proposed while it was away, and
    with another replica down every quorum needed it."""
    c = Cluster(retransmit_ms=10_000)  # no help from the periodic re-send in this test
    c.down.update({2, 3})
    tx_id = c.submit(0, 1)
    c.deliver()  # proposed, prepared by 1 alone: no quorum
    assert all(not n.executed for n in c.nodes)
    c.down.discard(3)  # 3's links come up; 2 stays down
    for i in (0, 1):
        c.handle(i, c.nodes[i].replica.on_peer_up(3))
    c.deliver()
    for i in (0, 1, 3):
        assert [e.tx_ids for e in c.nodes[i].executed] == [(tx_id,)]
    # A link that flaps does not make us re-send at its pace; nonsense peer ids are ignored.
    assert c.nodes[0].replica.on_peer_up(3) == []
    assert c.nodes[0].replica.on_peer_up(0) == [] and c.nodes[0].replica.on_peer_up(7) == []
