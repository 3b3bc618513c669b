"""Who may read (issue 17, item 3; docs/ARCHITECTURE.md, "Who may read"), in-process: every
refusal of a read token with its status and message, and every allowed case, against the real
queries, Ledger and driver on an in-memory store. The same over gRPC on a live consortium:
tests/node/test_network.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import grpc
import pytest

from ledger import readtoken
from ledger.crypto import DOMAIN_READ, SigningKey
from ledger.v1 import api_pb2
from node.api import Abort, LedgerApi
from node.api.authority import CLOCK_SKEW_MS, token_of
from node.pbft import actions as act
from sim.factory import Factory
from tests.node.test_api_reads import ATTESTATIONS
from tests.node.test_driver import _block, make, make_api

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
NOT_OWNER = "is neither the owner key of this account nor the operator key of the bank that opened it"


class Node:
    """A node that executed: alice@BANK-A (funded), bob@BANK-B, carol@BANK-A (then frozen), and a
    payment alice -> bob; blocks 1..3 attested."""

    def __init__(self) -> None:
        self.fx = fx = Factory()
        driver, _, _ = make(fx)
        self.api: LedgerApi = make_api(fx, driver)
        self.alice, self.bob, self.carol = fx.client("alice"), fx.client("bob"), fx.client("carol")
        self.stranger = fx.client("stranger")  # a key the ledger does not know
        opened = [
            fx.open_account("BANK-A", "alice", self.alice),
            fx.open_account("BANK-B", "bob", self.bob),
            fx.open_account("BANK-A", "carol", self.carol),
        ]
        driver.run([_block(fx, 1, opened)])
        driver.run([_block(fx, 2, [fx.mint("USD.BANK-A", "alice", 1000)])])
        self.pay = fx.transfer([("alice", "bob", "USD.BANK-A", 10)])
        driver.run([_block(fx, 3, [self.pay])])
        driver.run([_block(fx, 4, [fx.set_frozen("BANK-A", "carol")])])
        driver.run([act.Attested(h, ATTESTATIONS) for h in (1, 2, 3)])

    def token(
        self,
        key: SigningKey,
        method: str,
        scope: str = readtoken.SCOPE_ALL,
        *,
        issued_ms: int | None = None,
        lifetime_ms: int = 60_000,
        chain_id: str | None = None,
    ) -> bytes:
        now = time.time_ns() // 1_000_000 if issued_ms is None else issued_ms
        return readtoken.build(key, chain_id or self.fx.chain_id, method, scope, now, lifetime_ms)

    def account(self, account_id: str, token: bytes | None) -> api_pb2.Account:
        raw = api_pb2.GetAccountRequest(account_id=account_id).SerializeToString()
        return api_pb2.Account.FromString(_run(self.api.queries.get_account(raw, token)))

    def supply(self, token: bytes | None) -> api_pb2.GetSupplyResponse:
        return api_pb2.GetSupplyResponse.FromString(_run(self.api.queries.get_supply(b"", token)))

    def block(self, height: int, token: bytes | None) -> api_pb2.GetBlockResponse:
        raw = api_pb2.GetBlockRequest(height=height).SerializeToString()
        return api_pb2.GetBlockResponse.FromString(_run(self.api.queries.get_block(raw, token)))

    def blocks(self, token: bytes | None) -> api_pb2.GetBlocksResponse:
        raw = api_pb2.GetBlocksRequest(from_height=1, max_blocks=10).SerializeToString()
        return api_pb2.GetBlocksResponse.FromString(_run(self.api.queries.get_blocks(raw, token)))

    def transaction(self, tx_id: bytes, token: bytes | None) -> api_pb2.GetTransactionResponse:
        raw = api_pb2.GetTransactionRequest(tx_id=tx_id).SerializeToString()
        return api_pb2.GetTransactionResponse.FromString(_run(self.api.queries.get_transaction(raw, token)))


def _run(call: Coroutine[Any, Any, bytes]) -> bytes:
    return asyncio.run(call)


def refusal(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(Abort) as info:
        call()
    return info.value.code, info.value.message


@pytest.fixture(scope="module")
def node() -> Node:
    return Node()


def test_an_account_is_read_by_its_owner_and_its_banks_operator(node: Node) -> None:
    assert node.account("alice", node.token(node.alice, "GetAccount", "alice")).balances[0].available == 990
    assert node.account(
        "alice", node.token(node.fx.operators["BANK-A"], "GetAccount", "alice")
    ).member_id == ("BANK-A")
    assert node.account("bob", node.token(node.fx.operators["BANK-B"], "GetAccount", "bob")).owner_key == (
        node.bob.public_key
    )
    # The owner of a frozen account still sees it (and that it is frozen).
    assert node.account("carol", node.token(node.carol, "GetAccount", "carol")).frozen


def test_every_refused_account_read_says_what_was_missing(node: Node) -> None:
    op_a, op_b = node.fx.operators["BANK-A"], node.fx.operators["BANK-B"]
    now = time.time_ns() // 1_000_000
    good = node.token(node.alice, "GetAccount", "alice")
    forged = good[:32] + bytes([good[32] ^ 1]) + good[33:]  # one bit of the signature
    cases: list[tuple[str, bytes | None, grpc.StatusCode, str]] = [
        ("no token", None, UNAUTHENTICATED, "GetAccount needs a read token (x-ledger-read-token-bin"),
        ("malformed", b"\x00" * 10, UNAUTHENTICATED, "read token malformed: not a version 1 read token"),
        (
            "expired",
            node.token(node.alice, "GetAccount", "alice", issued_ms=now - 200_000, lifetime_ms=100_000),
            UNAUTHENTICATED,
            "read token expired at",
        ),
        (
            "not yet valid",
            node.token(node.alice, "GetAccount", "alice", issued_ms=now + 2 * CLOCK_SKEW_MS),
            UNAUTHENTICATED,
            "in the future",
        ),
        (
            "another method",
            node.token(node.alice, "GetSupply", "alice"),
            UNAUTHENTICATED,
            "read token is for GetSupply, not GetAccount",
        ),
        (
            "another scope",
            node.token(node.alice, "GetAccount", "bob"),
            UNAUTHENTICATED,
            "read token is for scope 'bob', not 'alice'",
        ),
        (
            "valid too long",
            node.token(node.alice, "GetAccount", "alice", lifetime_ms=6 * 60_000),
            UNAUTHENTICATED,
            "read token valid for 360000 ms; at most 300000 ms",
        ),
        ("forged signature", forged, UNAUTHENTICATED, "read token signature does not verify"),
        (
            "another chain",
            node.token(node.alice, "GetAccount", "alice", chain_id="other-chain"),
            UNAUTHENTICATED,
            "read token signature does not verify",
        ),
        ("another client's key", node.token(node.bob, "GetAccount", "alice"), DENIED, NOT_OWNER),
        ("another bank's operator", node.token(op_b, "GetAccount", "alice"), DENIED, NOT_OWNER),
        (
            "a member's node key",
            node.token(node.fx.node_keys["BANK-A"], "GetAccount", "alice"),
            DENIED,
            NOT_OWNER,
        ),
        ("a stranger's key", node.token(node.stranger, "GetAccount", "alice"), DENIED, NOT_OWNER),
    ]
    for name, token, code, message in cases:
        got = refusal(lambda token=token: node.account("alice", token))
        assert got[0] == code and message in got[1], (name, got)
    # An account that does not exist: the same refusal for a client (nothing learnt), NOT_FOUND
    # for an operator (who sees every block anyway).
    assert refusal(lambda: node.account("nobody", node.token(node.alice, "GetAccount", "nobody"))) == (
        DENIED,
        f"key {node.alice.public_key.hex()[:16]} {NOT_OWNER}",
    )
    code, message = refusal(lambda: node.account("nobody", node.token(op_a, "GetAccount", "nobody")))
    assert code == grpc.StatusCode.NOT_FOUND and "no account 'nobody'" in message


def test_supply_and_headers_are_for_known_keys_and_bodies_for_members(node: Node) -> None:
    op_b, node_key = node.fx.operators["BANK-B"], node.fx.node_keys["BANK-C"]
    assert node.supply(node.token(node.alice, "GetSupply")).height == 4  # an account's owner
    assert node.supply(node.token(op_b, "GetSupply")).height == 4  # any member's operator
    for who, key in (("stranger", node.stranger), ("owner of a frozen account", node.carol)):
        code, message = refusal(lambda key=key: node.supply(node.token(key, "GetSupply")))
        assert code == DENIED and "is not a key the ledger knows" in message, who
    assert refusal(lambda: node.supply(None))[0] == UNAUTHENTICATED
    assert refusal(lambda: node.supply(node.token(node.alice, "GetBlock")))[1] == (
        "read token is for GetBlock, not GetSupply"
    )
    # A client: header, certificate and attestations; no batch, no results.
    headers = node.block(3, node.token(node.alice, "GetBlock"))
    assert headers.block.header and headers.block.certificate.commits and headers.attestations_complete
    assert not headers.block.batch.envelopes and not headers.results
    ranged = node.blocks(node.token(node.alice, "GetBlocks"))
    assert [len(b.block.batch.envelopes) for b in ranged.blocks] == [0, 0, 0, 0] and ranged.next_height == 5
    # A member's operator or node: the whole block.
    for key in (op_b, node_key):
        full = node.block(3, node.token(key, "GetBlock"))
        assert (
            len(full.block.batch.envelopes) == 1
            and len(full.results) == 1
            and full.block.header == headers.block.header
        )
        assert [len(b.block.batch.envelopes) for b in node.blocks(node.token(key, "GetBlocks")).blocks] == [
            3,
            1,
            1,
            1,
        ]
    code, message = refusal(lambda: node.block(3, node.token(node.stranger, "GetBlock")))
    assert code == DENIED and "GetBlock: key" in message and "is not a key the ledger knows" in message
    assert refusal(lambda: node.blocks(node.token(node.alice, "GetBlock")))[1] == (
        "read token is for GetBlock, not GetBlocks"
    )


def test_a_transaction_is_read_by_its_signers_and_members(node: Node) -> None:
    tx_id = node.fx.tx_id(node.pay)
    scope = readtoken.tx_scope(tx_id)
    for key in (node.alice, node.fx.operators["BANK-D"], node.fx.node_keys["BANK-B"]):
        got = node.transaction(tx_id, node.token(key, "GetTransaction", scope))
        assert got.envelope.SerializeToString() == node.pay and got.status == api_pb2.TX_STATUS_COMMITTED
    code, message = refusal(lambda: node.transaction(tx_id, node.token(node.bob, "GetTransaction", scope)))
    assert code == DENIED and f"did not sign transaction {tx_id.hex()}" in message
    code, message = refusal(
        lambda: node.transaction(
            tx_id, node.token(node.alice, "GetTransaction", readtoken.tx_scope(bytes(32)))
        )
    )
    assert code == UNAUTHENTICATED and "read token is for scope" in message
    # Whether a tx_id is known is told to any valid token (as WaitReceipt tells anyone).
    unknown = readtoken.tx_scope(bytes(32))
    code, _ = refusal(
        lambda: node.transaction(bytes(32), node.token(node.stranger, "GetTransaction", unknown))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert refusal(lambda: node.transaction(tx_id, None))[0] == UNAUTHENTICATED


def test_token_bytes_and_metadata() -> None:
    key = SigningKey(bytes(range(32)))
    token = readtoken.build(key, "chain", "GetAccount", "alice", 1_000, 61_000)
    t = readtoken.decode(token)
    assert (t.public_key, t.method, t.scope, t.issued_ms, t.expires_ms) == (
        key.public_key,
        "GetAccount",
        "alice",
        1_000,
        62_000,
    )
    assert t.body == bytes([1, 10]) + b"GetAccount" + bytes([5]) + b"alice" + (1_000).to_bytes(8, "big") + (
        62_000
    ).to_bytes(8, "big")
    assert t.verifies("chain") and not t.verifies("other")
    assert t.signature == key.sign(DOMAIN_READ, "chain", t.body)
    for bad, why in [
        (token[:-1], "after the scope"),
        (token + b"\x00", "after the scope"),
        (token[:96] + b"\x02" + token[97:], "not a version 1"),
        (token[:97] + b"\xff" + token[98:], "truncated"),
        (bytes(readtoken.TOKEN_BYTES_MAX + 1), "a read token is at most"),
    ]:
        with pytest.raises(readtoken.ReadTokenError, match=why):
            readtoken.decode(bad)
    with pytest.raises(readtoken.ReadTokenError):
        readtoken.encode_body("GetAccount", "x" * (readtoken.SCOPE_BYTES_MAX + 1), 0, 0)
    assert token_of(None) is None and token_of([("other", "x")]) is None
    assert token_of([(readtoken.METADATA_KEY, token)]) == token
    with pytest.raises(Abort, match="2 read tokens"):
        token_of([(readtoken.METADATA_KEY, token), (readtoken.METADATA_KEY, token)])
