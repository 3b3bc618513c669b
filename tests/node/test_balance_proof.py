"""Balance proofs (issue 18, item 3): GetBalanceProof under the read authority, against the real
queries, Ledger, state tree and driver on an in-memory store; the SDK's verifier with genesis
alone, and a lying node's every alteration refused with its stable reason."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
import pytest

from client import cli
from client.proofs import verify_balance_proof
from ledger import readtoken
from ledger.crypto import DOMAIN_CONSENSUS, SigningKey
from ledger.statetree import ProofError
from ledger.v1 import api_pb2, consensus_pb2
from node.api import Abort, LedgerApi
from node.app import statetree
from node.app.ledger import Ledger
from node.pbft import actions as act
from node.pbft import journal as jr
from node.pbft import wire
from sim.factory import Factory
from tests.node.test_driver import _block, make, make_api

INTERVAL = 2


def _run(coro: Coroutine[Any, Any, bytes]) -> bytes:
    return asyncio.run(coro)


class Node:
    """alice@BANK-A (funded, then paid bob), bob@BANK-B; a checkpoint every 2 blocks, the one at
    4 stable (signed by BANK-A, C, D), the state tree at 4."""

    def __init__(self) -> None:
        self.fx = fx = Factory()
        self.driver, self.replica, _ = make(fx)
        self.ledger = self.driver.core.ledger = Ledger(fx.genesis, tree_interval=INTERVAL)
        self.api: LedgerApi = make_api(fx, self.driver)
        self.alice, self.bob = fx.client("alice"), fx.client("bob")
        opened = [fx.open_account("BANK-A", "alice", self.alice), fx.open_account("BANK-B", "bob", self.bob)]
        self.driver.run([_block(fx, 1, opened)])
        self.driver.run([_block(fx, 2, [fx.mint("USD.BANK-A", "alice", 1000)])])
        self.driver.run([_block(fx, 3, [fx.transfer([("alice", "bob", "USD.BANK-A", 10)])])])
        self.driver.run([_block(fx, 4, [fx.escrow_create("e1", "alice", "bob", "USD.BANK-A", 90, 10**9)])])
        self.stabilize(4)

    def stabilize(self, sequence: int, signers: tuple[str, ...] = ("BANK-A", "BANK-C", "BANK-D")) -> None:
        with self.driver.store.read() as r:
            state_root = self.ledger.state_root(r)
        tree_root = self.replica.tree_roots[sequence]
        proof = [self.checkpoint(m, sequence, state_root, tree_root) for m in signers]
        self.driver.run(
            [
                act.Persist(jr.STABLE, wire.encode_signed_list(proof)),
                act.Note("stable_checkpoint", {"sequence": sequence}),
            ]
        )

    def checkpoint(self, member_id: str, sequence: int, state_root: bytes, tree_root: bytes) -> bytes:
        m = self.fx.genesis.member(member_id)
        assert m is not None
        body = wire.encode_body(wire.Checkpoint(sequence, state_root, m.replica, tree_root))
        signature = self.fx.node_keys[member_id].sign(DOMAIN_CONSENSUS, self.fx.chain_id, body)
        return wire.encode_signed(body, m.replica, signature)

    def token(self, key: SigningKey, account_id: str, method: str = "GetBalanceProof") -> bytes:
        now = time.time_ns() // 1_000_000
        return readtoken.build(key, self.fx.chain_id, method, account_id, now, 60_000)

    def proof(self, account_id: str, token: bytes | None) -> bytes:
        raw = api_pb2.GetBalanceProofRequest(account_id=account_id).SerializeToString()
        return _run(self.api.proofs.get_balance_proof(raw, token))


@pytest.fixture(scope="module")
def node() -> Node:
    return Node()


def test_the_owner_and_its_bank_get_a_proof_that_verifies_with_genesis_alone(node: Node) -> None:
    for reader in (node.alice, node.fx.operators["BANK-A"]):
        proven = verify_balance_proof(
            node.fx.genesis, node.proof("alice", node.token(reader, "alice")), "alice"
        )
        assert proven.sequence == 4 and proven.exists and proven.member_id == "BANK-A"
        assert proven.owner_key == node.alice.public_key and not proven.frozen
        assert [(b.asset, b.available, b.held) for b in proven.balances if b.available or b.held] == [
            ("USD.BANK-A", 900, 90)
        ]
        assert proven.signers == (0, 2, 3)
    bob = verify_balance_proof(node.fx.genesis, node.proof("bob", node.token(node.bob, "bob")), "bob")
    assert [(b.asset, b.available, b.held) for b in bob.balances if b.available or b.held] == [
        ("USD.BANK-A", 10, 0)
    ]


@pytest.mark.parametrize(
    ("who", "method", "code"),
    [
        (None, "GetBalanceProof", grpc.StatusCode.UNAUTHENTICATED),
        ("alice", "GetAccount", grpc.StatusCode.UNAUTHENTICATED),  # a token for another method
        ("stranger", "GetBalanceProof", grpc.StatusCode.PERMISSION_DENIED),
        ("bob", "GetBalanceProof", grpc.StatusCode.PERMISSION_DENIED),  # another account's owner
        ("BANK-B", "GetBalanceProof", grpc.StatusCode.PERMISSION_DENIED),  # another bank's operator
    ],
)
def test_refusals(node: Node, who: str | None, method: str, code: grpc.StatusCode) -> None:
    keys = {"alice": node.alice, "bob": node.bob, "stranger": node.fx.client("stranger")}
    token = None
    if who is not None:
        token = node.token(keys.get(who) or node.fx.operators[who], "alice", method)
    with pytest.raises(Abort) as exc:
        node.proof("alice", token)
    assert exc.value.code == code


def _tampered(node: Node, change: Callable[[api_pb2.BalanceProof], None]) -> str:
    proof = api_pb2.BalanceProof.FromString(node.proof("alice", node.token(node.alice, "alice")))
    change(proof)
    with pytest.raises(ProofError) as exc:
        verify_balance_proof(node.fx.genesis, proof.SerializeToString(), "alice")
    return exc.value.reason


def _node_changed(p: api_pb2.BalanceProof) -> None:
    p.nodes[-1] = p.nodes[-1][:-1] + bytes([p.nodes[-1][-1] ^ 1])


def _foreign_checkpoint(p: api_pb2.BalanceProof) -> None:
    p.checkpoints[0].signature = bytes(64)


def test_a_lying_nodes_alterations_are_refused_with_stable_reasons(node: Node) -> None:
    def balance(p: api_pb2.BalanceProof) -> None:
        p.balances[0].available += 1

    def held(p: api_pb2.BalanceProof) -> None:
        p.balances[0].held = 0

    def hidden(p: api_pb2.BalanceProof) -> None:
        del p.balances[:]

    def account(p: api_pb2.BalanceProof) -> None:
        p.account = p.account[:-1] + b"\x01"  # claims frozen

    def absent(p: api_pb2.BalanceProof) -> None:
        p.account = b""

    def dropped_node(p: api_pb2.BalanceProof) -> None:
        del p.nodes[-1]

    def few(p: api_pb2.BalanceProof) -> None:
        del p.checkpoints[-1]

    def other_sequence(p: api_pb2.BalanceProof) -> None:
        p.sequence = 2

    def chain(p: api_pb2.BalanceProof) -> None:
        p.chain_id = "other-chain"

    def salt(p: api_pb2.BalanceProof) -> None:
        p.salts.append(bytes(16))

    cases = {
        "balance_mismatch": [balance, held, hidden],
        "account_mismatch": [account, absent],
        "missing_node": [dropped_node, _node_changed],
        "too_few_checkpoints": [few],
        "bad_signature": [_foreign_checkpoint],
        "other_sequence": [other_sequence],
        "wrong_chain": [chain],
        "malformed_proof": [salt],
    }
    for reason, changes in cases.items():
        for change in changes:
            assert _tampered(node, change) == reason, change.__name__
    with pytest.raises(ProofError) as exc:
        verify_balance_proof(node.fx.genesis, node.proof("alice", node.token(node.alice, "alice")), "bob")
    assert exc.value.reason == "other_account"
    with pytest.raises(ProofError) as exc:
        verify_balance_proof(node.fx.genesis, b"\xff\xff")
    assert exc.value.reason == "malformed_proof"


def test_a_checkpoint_not_yet_stable_is_unavailable_until_it_is() -> None:
    n = Node()
    n.api.proofs.stable_wait_s = 0.05
    n.driver.run([_block(n.fx, 5, [n.fx.mint("USD.BANK-A", "alice", 5)])])
    n.driver.run([_block(n.fx, 6, [])])
    with pytest.raises(Abort) as exc:
        n.proof("alice", n.token(n.alice, "alice"))
    assert exc.value.code == grpc.StatusCode.UNAVAILABLE
    n.stabilize(6)
    proven = verify_balance_proof(n.fx.genesis, n.proof("alice", n.token(n.alice, "alice")))
    assert proven.sequence == 6 and proven.balances[0].available == 905
    with n.driver.store.read() as r:
        assert statetree.tree_root(r)[0] == 6


def test_a_node_whose_tree_is_not_the_certified_one_refuses_to_prove() -> None:
    n = Node()
    n.driver.run([_block(n.fx, 5, []), _block(n.fx, 6, [])])
    n.replica.tree_roots[6] = bytes(32)  # 2f+1 certified another tree than this node's
    n.stabilize(6)
    with pytest.raises(Abort) as exc:
        n.proof("alice", n.token(n.alice, "alice"))
    assert (
        exc.value.code == grpc.StatusCode.INTERNAL
        and "not the one 2f+1 members certified" in exc.value.message
    )


def test_ledgerctl_verify_checks_a_saved_proof_offline(
    node: Node, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "genesis.json").write_text(node.fx.genesis.to_json())
    saved = tmp_path / "alice.proof"
    saved.write_bytes(node.proof("alice", node.token(node.alice, "alice")))
    assert cli.run(["--dir", str(tmp_path), "--json", "verify", str(saved)]) == cli.EXIT_OK
    doc = capsys.readouterr().out
    assert '"verified": true' in doc and '"available_minor": 900' in doc and '"checkpoint": 4' in doc
    forged = api_pb2.BalanceProof.FromString(saved.read_bytes())
    forged.balances[0].available = 10**6
    saved.write_bytes(forged.SerializeToString())
    assert cli.run(["--dir", str(tmp_path), "verify", str(saved)]) == cli.EXIT_UNVERIFIED
    assert "balance_mismatch" in capsys.readouterr().err


def test_the_tree_root_the_checkpoint_signs_is_the_stored_one(node: Node) -> None:
    with node.driver.store.read() as r:
        assert statetree.tree_root(r) == (4, node.replica.tree_roots[4])
        raw = r.get(b"j/" + jr.STABLE)
    assert raw is not None
    first = consensus_pb2.SignedMessage.FromString(wire.decode_signed_list(raw)[0])
    assert (
        consensus_pb2.ConsensusMessage.FromString(first.body).checkpoint.tree_root
        == node.replica.tree_roots[4]
    )
