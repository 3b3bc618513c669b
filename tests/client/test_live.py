"""The SDK and ledgerctl over a real 4-node consortium (one OS process per bank).

One consortium per module (start-up costs seconds on 2 shared cores); every node it started is
stopped by pid in the fixture's finalizer, even when a test fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from client.cli import run
from client.models import Committed, NotAuthorized, NotFound, Rejected, Unverified
from client.sdk import LedgerClient
from client.tx import LegSpec, Transaction
from client.wallet import Wallet
from ledger import tls
from ledger.crypto import SigningKey, load_key
from ledger.genesis import Genesis
from ledger.v1 import api_pb2_grpc, tx_pb2
from tests.client.fakes import closed_port, forge_certificate

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts"))

from consortium import Consortium  # noqa: E402


def _kill_leftovers(c: Consortium) -> None:
    """Stop every node process this test started, by pid, whatever state the test left."""
    c.down()
    for proc in list(c._procs.values()):  # the test owns these children
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    c = Consortium(tmp_path_factory.mktemp("live") / "c")
    try:
        c.up(4, limits={"checkpoint_interval": 5})  # checkpoints (and balance proofs) come often
        yield c
    finally:
        _kill_leftovers(c)


@pytest.fixture(scope="module")
def client(consortium: Consortium) -> Iterator[LedgerClient]:
    # Reads with BANK-A's operator key: BANK-A's accounts, supply, whole blocks, any transaction.
    with LedgerClient(consortium.genesis_path, timeout_s=15.0, reader=_op(consortium, "BANK-A")) as c:
        yield c


def _op(c: Consortium, bank: str) -> SigningKey:
    return load_key(c.operator_key_path(bank)).key


def _in_an_hour() -> int:
    return int(time.time() * 1000) + 3_600_000


def _ok(outcome: object) -> Committed:
    assert isinstance(outcome, Committed) and outcome.ok, str(outcome)
    return outcome


def test_every_transaction_kind_and_query_through_the_sdk(
    consortium: Consortium, client: LedgerClient
) -> None:
    b = client.tx
    alice, bob = SigningKey.generate(), SigningKey.generate()
    _ok(
        client.submit(
            b.open_account("BANK-A", "sdk-alice", alice.public_key).signed_by(_op(consortium, "BANK-A"))
        )
    )
    _ok(
        client.submit(
            b.open_account("BANK-B", "sdk-bob", bob.public_key).signed_by(_op(consortium, "BANK-B"))
        )
    )
    _ok(
        client.submit(
            b.mint("USD.BANK-A", "sdk-alice", 50000, "sdk-dep-1").signed_by(_op(consortium, "BANK-A"))
        )
    )
    _ok(
        client.submit(
            b.mint("EUR.BANK-B", "sdk-bob", 40000, "sdk-dep-2").signed_by(_op(consortium, "BANK-B"))
        )
    )
    pay = b.transfer([LegSpec("sdk-alice", "sdk-bob", "USD.BANK-A", 1000)]).signed_by(alice)
    first = _ok(client.submit(pay))
    pvp = b.pvp(
        LegSpec("sdk-alice", "sdk-bob", "USD.BANK-A", 2000),
        LegSpec("sdk-bob", "sdk-alice", "EUR.BANK-B", 1800),
    )
    _ok(client.submit(pvp.signed_by(alice, bob)))
    _ok(
        client.submit(
            b.escrow_create(
                "sdk-e1", LegSpec("sdk-alice", "sdk-bob", "USD.BANK-A", 500), _in_an_hour()
            ).signed_by(alice)
        )
    )
    _ok(client.submit(b.escrow_post("sdk-e1", 200).signed_by(alice)))
    _ok(
        client.submit(
            b.escrow_create(
                "sdk-e2", LegSpec("sdk-alice", "sdk-bob", "USD.BANK-A", 100), _in_an_hour()
            ).signed_by(alice)
        )
    )
    _ok(client.submit(b.escrow_void("sdk-e2").signed_by(bob)))
    _ok(client.submit(b.redeem("sdk-bob", "USD.BANK-A", 700, "sdk-pay-1").signed_by(bob)))
    _ok(client.submit(b.set_frozen("sdk-bob", True).signed_by(_op(consortium, "BANK-B"))))
    frozen = client.submit(b.transfer([LegSpec("sdk-alice", "sdk-bob", "USD.BANK-A", 1)]).signed_by(alice))
    assert isinstance(frozen, Committed) and frozen.code_name == "ACCOUNT_FROZEN"
    _ok(client.submit(b.set_frozen("sdk-bob", False).signed_by(_op(consortium, "BANK-B"))))
    poor = client.submit(b.transfer([LegSpec("sdk-bob", "sdk-alice", "EUR.BANK-B", 10**9)]).signed_by(bob))
    assert isinstance(poor, Committed) and poor.code_name == "INSUFFICIENT_FUNDS"

    many = [
        b.transfer([LegSpec("sdk-alice", "sdk-bob", "USD.BANK-A", 1)]).signed_by(alice) for _ in range(20)
    ]
    outcomes = client.submit_many(many)
    assert all(isinstance(o, Committed) and o.ok for o in outcomes), [str(o) for o in outcomes]
    heights = {o.height for o in outcomes if isinstance(o, Committed)}
    assert len(heights) < 20, heights  # the batch path: the primary packs them into shared blocks

    # Resubmitting the same envelope is answered with the first result, not executed again.
    again = _ok(client.submit(pay))
    assert (again.height, again.result.index) == (first.height, first.result.index)

    top = max(heights)  # read our own writes, at whichever node answers
    a = client.account("sdk-alice", min_height=top)
    assert a.member_id == "BANK-A" and a.owner_key == alice.public_key and not a.frozen and a.height >= top
    assert a.balance("USD.BANK-A").available_minor == 50000 - 1000 - 2000 - 500 + 300 - 20
    assert a.balance("EUR.BANK-B").available_minor == 1800
    assert client.account("sdk-bob", min_height=top, as_key=bob).balance("USD.BANK-A").available_minor == (
        1000 + 2000 + 200 - 700 + 20
    )
    # Who may read (docs/ARCHITECTURE.md): BANK-A's operator may not read BANK-B's client, nor
    # alice bob's account; bob's bank may.
    with pytest.raises(NotAuthorized, match="PERMISSION_DENIED"):
        client.account("sdk-bob")
    with pytest.raises(NotAuthorized, match="PERMISSION_DENIED"):
        client.account("sdk-bob", as_key=alice)
    assert client.account("sdk-bob", as_key=_op(consortium, "BANK-B")).owner_key == bob.public_key
    assert client.supply(as_key=alice).height >= top  # any key the ledger knows
    headers = client.block(first.height, as_key=alice)  # a client: the block without bodies
    assert not headers.bodies and not headers.envelopes and headers.attested is not None
    assert client.transaction(pay.tx_id, as_key=alice).transaction is not None  # its signer
    with pytest.raises(NotAuthorized, match="did not sign"):
        client.transaction(pay.tx_id, as_key=bob)
    with (
        LedgerClient(consortium.genesis_path, timeout_s=5.0) as keyless,
        pytest.raises(NotAuthorized, match=r"UNAUTHENTICATED GetSupply needs a read token"),
    ):
        keyless.supply()
    read = client.supply(min_height=top)
    assert read.height >= top
    supply = {s.asset: s for s in read.assets}
    assert supply["USD.BANK-A"].redeemed_minor >= 700
    assert (
        supply["USD.BANK-A"].outstanding_minor
        == supply["USD.BANK-A"].minted_minor - supply["USD.BANK-A"].redeemed_minor
    )
    info = client.transaction(pay.tx_id)
    assert info.transaction is not None and info.transaction.body == pay.body
    block = client.block(first.height)
    assert pay.tx_id in block.tx_ids and block.attested is not None and block.bodies
    chain = client.blocks(1, 10_000)  # more than a node serves at once: it caps the count
    assert [b.block.header.height for b in chain.blocks] == list(range(1, chain.next_height))
    assert chain.blocks[first.height - 1].block.digest == block.block.digest and chain.last_height >= top
    statuses = client.statuses()
    assert len(statuses) == 4 and all(not isinstance(s, str) for s in statuses.values())
    with pytest.raises(NotFound):
        client.account("sdk-nobody")
    with pytest.raises(NotFound):
        client.transaction(bytes(32))
    with pytest.raises(NotFound):
        client.block(10**9)


def test_the_async_client_settles_many_over_one_submit_stream(
    consortium: Consortium, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from client.aio import AsyncLedgerClient

    carol = SigningKey.generate()
    op = _op(consortium, "BANK-A")

    async def scenario() -> list[Committed]:
        async with AsyncLedgerClient(consortium.genesis_path, timeout_s=15.0, reader=op) as c:
            b = c.tx
            setup = [
                b.open_account("BANK-A", "aio-carol", carol.public_key).signed_by(op),
                b.open_account("BANK-A", "aio-dave", bytes(32)).signed_by(op),
            ]
            for out in await c.submit_many(setup):
                _ok(out)
            _ok(await c.submit(b.mint("USD.BANK-A", "aio-carol", 1000, "aio-dep-1").signed_by(op)))
            many = [
                b.transfer([LegSpec("aio-carol", "aio-dave", "USD.BANK-A", i + 1)]).signed_by(carol)
                for i in range(20)
            ]
            c._first = 0

            async def not_this_path(*args: object, **kwargs: object) -> None:
                raise AssertionError("the stream should have settled every transaction")

            monkeypatch.setattr(c, "_submit_chunk", not_this_path)
            monkeypatch.setattr(c, "submit", not_this_path)
            outcomes = [_ok(o) for o in await c.submit_many(many, chunk_size=7)]
            assert [o.tx_id for o in outcomes] == [t.tx_id for t in many]
            monkeypatch.undo()
            dave = await c.account("aio-dave")
            assert dave.balance("USD.BANK-A").available_minor == sum(range(1, 21))
            return outcomes

    outcomes = asyncio.run(scenario())
    # The stream path: every receipt came from the one node the stream went to, and the
    # primary packed the chunks into shared blocks.
    assert {o.endpoint for o in outcomes} == {consortium.genesis().members[0].api_address}
    assert len({o.height for o in outcomes}) < 20


def test_the_nodes_refuse_bad_envelopes_definitely(consortium: Consortium, client: LedgerClient) -> None:
    tx = client.tx.open_account("BANK-A", "sdk-x", bytes(32))
    wrong_chain_sig = Transaction("other-chain", tx.body).signed_by(_op(consortium, "BANK-A")).signatures
    out = client.submit(Transaction(tx.chain_id, tx.body, wrong_chain_sig))
    assert isinstance(out, Rejected) and out.refusals[0][1] == "UNAUTHENTICATED", out


def test_a_copy_signed_by_a_stranger_does_not_block_the_genuine_one(
    consortium: Consortium, client: LedgerClient
) -> None:
    owner, stranger, keyless = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    b = client.tx
    bank_a = _op(consortium, "BANK-A")
    _ok(client.submit(b.open_account("BANK-A", "sdk-victim", owner.public_key).signed_by(bank_a)))
    # The stranger is a client of the ledger (its key is known), so its copy gets admitted.
    _ok(client.submit(b.open_account("BANK-A", "sdk-stranger", stranger.public_key).signed_by(bank_a)))
    _ok(client.submit(b.mint("USD.BANK-A", "sdk-victim", 100, "sdk-victim-dep").signed_by(bank_a)))
    pay = b.redeem("sdk-victim", "USD.BANK-A", 40, "sdk-victim-pay")
    # A copy signed by a key the ledger does not know is refused at admission.
    refused = client.submit(pay.signed_by(keyless), timeout_s=3.0)
    assert isinstance(refused, Rejected) and "no key the ledger knows" in refused.detail, refused
    # The stranger's copy has the same body (same tx id) and a valid signature of the wrong key.
    forged = client.submit(pay.signed_by(stranger), timeout_s=3.0)
    assert not isinstance(forged, Committed), forged
    stale = client.transaction(pay.tx_id).committed
    assert stale.code_name == "MISSING_SIGNATURE" and not stale.final
    genuine = _ok(client.submit(pay.signed_by(owner), timeout_s=5.0))
    assert genuine.final and genuine.height > stale.height
    assert client.account("sdk-victim").balance("USD.BANK-A").available_minor == 60


def test_a_rival_banks_signature_on_a_mint_does_not_block_the_genuine_one(
    consortium: Consortium, client: LedgerClient
) -> None:
    # Regression (node review): the node's index kept its own list of codes that do not consume
    # a tx_id, without NOT_ISSUER; a rival operator's copy was then indexed as final, the genuine
    # mint refused or mis-receipted, and a retrying client could mint twice.
    owner = SigningKey.generate()
    b = client.tx
    _ok(
        client.submit(
            b.open_account("BANK-A", "sdk-mint-target", owner.public_key).signed_by(_op(consortium, "BANK-A"))
        )
    )
    mint = b.mint("USD.BANK-A", "sdk-mint-target", 500, "sdk-rival-dep")
    rival = client.submit(mint.signed_by(_op(consortium, "BANK-B")), timeout_s=3.0)
    assert not isinstance(rival, Committed), rival  # never a definite outcome for this tx id
    stale = client.transaction(mint.tx_id).committed
    assert stale.code_name == "NOT_ISSUER" and not stale.final
    genuine = _ok(client.submit(mint.signed_by(_op(consortium, "BANK-A")), timeout_s=5.0))
    assert genuine.final and genuine.height > stale.height
    assert client.transaction(mint.tx_id).committed.code_name == "OK"
    assert client.account("sdk-mint-target").balance("USD.BANK-A").available_minor == 500


class LyingProxy(api_pb2_grpc.LedgerServiceServicer):
    """Forwards to a real node, but forges the commit certificate of every receipt it serves."""

    def __init__(self, genesis: Genesis, target: str) -> None:
        self.channel = tls.channel(genesis, target)
        self.stub = api_pb2_grpc.LedgerServiceStub(self.channel)
        self.feed_lies = 0
        self.receipts_served = 0
        self.proofs_lied = 0

    def Submit(self, request, context):  # type: ignore[no-untyped-def]
        return self.stub.Submit(request, timeout=5)

    def WaitReceipt(self, request, context):  # type: ignore[no-untyped-def]
        self.receipts_served += 1
        return forge_certificate(self.stub.WaitReceipt(request, timeout=10))

    def GetTransaction(self, request, context):  # type: ignore[no-untyped-def]
        resp = self.stub.GetTransaction(request, timeout=5, metadata=context.invocation_metadata())
        forge_certificate(resp.receipt)
        return resp

    def SubmitBatch(self, request, context):  # type: ignore[no-untyped-def]
        return self.stub.SubmitBatch(request, timeout=5)

    def WaitReceipts(self, request, context):  # type: ignore[no-untyped-def]
        return (forge_certificate(r) for r in self.stub.WaitReceipts(request, timeout=10))

    def WaitReceiptBatches(self, request, context):  # type: ignore[no-untyped-def]
        for batch in self.stub.WaitReceiptBatches(request, timeout=10):
            for r in batch.receipts:
                forge_certificate(r)
            yield batch

    def SubmitStream(self, request_iterator, context):  # type: ignore[no-untyped-def]
        for reply in self.stub.SubmitStream(request_iterator, timeout=30):
            for r in reply.receipts.receipts:
                self.receipts_served += 1
                forge_certificate(r)
            yield reply

    # Reads pass the caller's read token on (the node decides who may read).
    def GetAccount(self, request, context):  # type: ignore[no-untyped-def]
        return self.stub.GetAccount(request, timeout=5, metadata=context.invocation_metadata())

    def GetBlock(self, request, context):  # type: ignore[no-untyped-def]
        return self.stub.GetBlock(request, timeout=5, metadata=context.invocation_metadata())

    def GetBalanceProof(self, request, context):  # type: ignore[no-untyped-def]
        # A million more of the first asset than the certified state holds.
        proof = self.stub.GetBalanceProof(request, timeout=5, metadata=context.invocation_metadata())
        if proof.balances:
            proof.balances[0].available += 1_000_000
        else:
            proof.balances.add(asset="USD.BANK-A", available=1_000_000)
        self.proofs_lied += 1
        return proof

    def GetBlocks(self, request, context):  # type: ignore[no-untyped-def]
        return self.stub.GetBlocks(request, timeout=5, metadata=context.invocation_metadata())

    def GetSupply(self, request, context):  # type: ignore[no-untyped-def]
        return self.stub.GetSupply(request, timeout=5, metadata=context.invocation_metadata())

    def GetStatus(self, request, context):  # type: ignore[no-untyped-def]
        return self.stub.GetStatus(request, timeout=5)

    def GetAccountHistory(self, request, context):  # type: ignore[no-untyped-def]
        return self.stub.GetAccountHistory(request, timeout=5, metadata=context.invocation_metadata())

    def GetEscrow(self, request, context):  # type: ignore[no-untyped-def]
        return self.stub.GetEscrow(request, timeout=5, metadata=context.invocation_metadata())

    def ListEscrows(self, request, context):  # type: ignore[no-untyped-def]
        return self.stub.ListEscrows(request, timeout=5, metadata=context.invocation_metadata())

    def Feed(self, request, context):  # type: ignore[no-untyped-def]
        # Every block with results comes with its first result's code turned around.
        for msg in self.stub.Feed(request, timeout=30, metadata=context.invocation_metadata()):
            if msg.block.results:
                first = msg.block.results[0]
                first.code = tx_pb2.INSUFFICIENT_FUNDS if first.code == tx_pb2.OK else tx_pb2.OK
                self.feed_lies += 1
            yield msg


def test_a_lying_node_in_front_of_a_real_one_is_caught(consortium: Consortium) -> None:
    genesis = consortium.genesis()
    proxy = LyingProxy(genesis, genesis.members[0].api_address)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    api_pb2_grpc.add_LedgerServiceServicer_to_server(proxy, server)
    # BANK-A's node gone bad: it serves with its own certificate, which the client accepts.
    files = consortium.bank_files("BANK-A")
    identity = tls.load_identity(files.tls_cert, files.tls_key)
    port = server.add_secure_port(
        "127.0.0.1:0", tls.server_credentials(genesis, identity, require_client_auth=False)
    )
    server.start()
    try:
        endpoints = [f"127.0.0.1:{port}", genesis.members[1].api_address]
        with LedgerClient(genesis, endpoints, timeout_s=15.0, reader=_op(consortium, "BANK-A")) as c:
            tx = c.tx.open_account("BANK-A", "sdk-liar-test", bytes(32)).signed_by(_op(consortium, "BANK-A"))
            out = c.submit(tx)
            assert proxy.receipts_served == 1  # asked first, its forged receipt refused
            assert isinstance(out, Committed) and out.ok and out.endpoint == endpoints[1]
            assert c.transaction(tx.tx_id).committed.endpoint == endpoints[1]
            # submit_many's stream to the liar: its first forged receipt ends that path, and
            # every transaction settles the careful way, at the honest node.
            many = [
                c.tx.open_account("BANK-A", f"sdk-liar-{i}", bytes(32)).signed_by(_op(consortium, "BANK-A"))
                for i in range(3)
            ]
            c._first = 0  # the stream goes to the liar
            served = proxy.receipts_served
            outcomes = c.submit_many(many)
            assert proxy.receipts_served > served  # the stream did carry its forged receipts
            assert all(isinstance(o, Committed) and o.ok and o.endpoint == endpoints[1] for o in outcomes)
            # The feed: the liar's altered results do not verify; the feed goes on at the
            # honest node from the same height, and its blocks carry the true results.
            c._first = 0
            steps = c.feed(1, accounts=["sdk-liar-test"])
            step = next(s for s in steps if s.block is not None)
            steps.close()
            assert proxy.feed_lies >= 1
            assert [(t.tx_id, t.ok) for t in step.transactions] == [(tx.tx_id, True)]
            # A balance proof: the liar's inflated balance does not verify; the honest node's does.
            c._first = 0
            proven, _ = c.balance_proof("sdk-liar-test")
            assert proxy.proofs_lied == 1 and not any(b.available for b in proven.balances)
        only_liar = LedgerClient(genesis, endpoints[:1], timeout_s=15.0, reader=_op(consortium, "BANK-A"))
        with only_liar, pytest.raises(Unverified):
            next(s for s in only_liar.feed(1, accounts=["sdk-liar-test"]) if s.block is not None)
        with only_liar, pytest.raises(Unverified) as refused:
            only_liar.balance_proof("sdk-liar-test")
        assert "balance_mismatch" in str(refused.value)
    finally:
        server.stop(grace=None).wait()
        proxy.channel.close()


def _cli(consortium: Consortium, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = run(["--dir", str(consortium.dir), "--timeout", "15", *argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def test_ledgerctl_commands_and_error_paths(
    consortium: Consortium, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def ok(*argv: str) -> str:
        code, out, err = _cli(consortium, capsys, *argv)
        assert code == 0, (argv, out, err)
        return out

    ok("keys", "new", "cli-carol")
    ok("keys", "new", "cli-dave")
    assert "cli-carol" in ok("keys", "list")
    assert "committed: OK" in ok("account", "open", "cli-carol", "--bank", "BANK-A", "--owner", "cli-carol")
    ok("account", "open", "cli-dave", "--bank", "BANK-B", "--owner", "cli-dave")
    ok("mint", "300.00", "USD.BANK-A", "--to", "cli-carol", "--ref", "cli-dep-1")
    ok("mint", "200.00", "EUR.BANK-B", "--to", "cli-dave", "--ref", "cli-dep-2")
    doc = json.loads(ok("--json", "transfer", "cli-carol", "cli-dave", "10.25", "USD.BANK-A"))
    assert doc["result"] == "OK" and len(doc["commit_signers"]) == 3
    ok(
        "transfer",
        "cli-carol",
        "cli-dave",
        "1.00",
        "USD.BANK-A",
        "--leg",
        "cli-carol",
        "cli-dave",
        "2.00",
        "USD.BANK-A",
    )
    ok("pvp", "cli-carol", "cli-dave", "50.00", "USD.BANK-A", "45.00", "EUR.BANK-B")
    ok("escrow", "create", "cli-e1", "cli-carol", "cli-dave", "20.00", "USD.BANK-A")
    ok("escrow", "post", "cli-e1", "5.00", "USD.BANK-A", "--by", "cli-carol")
    ok("escrow", "create", "cli-e2", "cli-carol", "cli-dave", "1.00", "USD.BANK-A")
    ok("escrow", "void", "cli-e2", "--by", "cli-dave")
    ok("redeem", "cli-dave", "3.00", "USD.BANK-A", "--ref", "cli-pay-1")
    ok("account", "freeze", "cli-dave")
    ok("account", "unfreeze", "cli-dave")
    bal = json.loads(ok("--json", "balance", "cli-carol", "--confirmations", "2"))
    assert {b["asset"]: b["available"] for b in bal["balances"]} == {
        "USD.BANK-A": "231.75",
        "EUR.BANK-B": "45.00",
    }
    assert "USD.BANK-A" in ok("supply")
    # Balances as of the latest stable checkpoint, proven; the saved proof verifies offline alike.
    saved = tmp_path / "carol.proof"
    proven = json.loads(ok("--json", "balance", "cli-carol", "--proof", "--out", str(saved)))
    assert proven["verified"] and proven["checkpoint"] >= 5 and len(proven["signers"]) == 3
    assert json.loads(ok("--json", "verify", str(saved))) == proven
    ok("tx", doc["tx_id"])
    assert "verified" in ok("block", str(doc["height"]))
    assert len(json.loads(ok("--json", "status"))) == 4

    for argv, code_expected, message in [
        (["mint", "1.005", "USD.BANK-A", "--to", "cli-carol", "--ref", "x"], 2, "more than 2 decimal places"),
        (["mint", "abc", "USD.BANK-A", "--to", "cli-carol", "--ref", "x"], 2, "not a decimal amount"),
        (["transfer", "cli-nobody", "cli-dave", "1.00", "USD.BANK-A"], 3, "not found"),
        (["balance", "cli-nobody"], 3, "not found"),
        (["transfer", "cli-carol", "cli-dave", "100000.00", "USD.BANK-A"], 1, "INSUFFICIENT_FUNDS"),
        (["--json", "balance", "cli-nobody"], 3, '"exit_code": 3'),
        (["mint", "1.00", "USD.BANK-A", "--to", "cli-carol", "--ref", "cli-dep-1"], 1, "DUPLICATE_REFERENCE"),
        (["--node", closed_port(), "balance", "cli-carol"], 4, "are the nodes running"),
    ]:
        code, out, err = _cli(consortium, capsys, *argv)
        assert code == code_expected and message in out + err, (argv, code, out, err)
    # Reads need a key that may read: a wallet with a stranger's key only, then no key at all.
    elsewhere = ["--dir", str(tmp_path), "--genesis", str(consortium.genesis_path)]
    code, out, err = _cli(consortium, capsys, *elsewhere, "balance", "cli-carol")
    assert code == 7 and "reads need a key, and there is none" in err, (code, out, err)
    Wallet(tmp_path / "wallet").create("stranger")
    code, out, err = _cli(consortium, capsys, *elsewhere, "balance", "cli-carol")
    assert code == 7 and "PERMISSION_DENIED" in err and "is neither the owner key" in err, (code, out, err)


def test_the_package_docstring_example_runs(
    consortium: Consortium, capsys: pytest.CaptureFixture[str]
) -> None:
    import client as package

    assert package.__doc__ is not None
    code = package.__doc__.split("::\n", 1)[1].split("\nModules:", 1)[0]
    code = textwrap.dedent(code).replace('Path("consortium")', f"Path({str(consortium.dir)!r})")
    exec(compile(code, "client/__init__.py example", "exec"), {})
    printed = capsys.readouterr().out
    assert "OK at height" in printed and "available_minor=2500" in printed, printed


def test_the_sdk_rides_through_a_primary_crash(consortium: Consortium, client: LedgerClient) -> None:
    # Kill the primary: the SDK's first node is gone and the rest must change view before
    # anything commits. The same envelope is retried until a verified receipt arrives.
    primary = next(s for s in client.statuses().values() if not isinstance(s, str)).primary
    bank = consortium.genesis().members[primary].member_id
    consortium.kill(bank)
    try:
        tx = client.tx.open_account("BANK-B", "sdk-after-crash", bytes(32)).signed_by(
            _op(consortium, "BANK-B")
        )
        out = _ok(client.submit(tx, timeout_s=30.0))
        assert out.receipt.block.view >= 1 and primary not in out.receipt.block.commit_signers
        assert client.account("sdk-after-crash", as_key=_op(consortium, "BANK-B")).member_id == "BANK-B"
    finally:
        consortium.restart(bank)


def test_demo_runs_and_leaves_no_process_behind(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--dir", str(tmp_path / "demo")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    node_pids: list[int] = []
    try:
        output, _ = proc.communicate(timeout=240)
        node_pids = [int(p) for p in re.findall(r"pid (\d+)", output)]
        assert proc.returncode == 0, output
        assert "DEMO OK" in output and "all 4 nodes at height" in output
        assert len(set(node_pids)) >= 5  # 4 started + the restarted one, each reported
        alive = [p for p in node_pids if _alive(p)]
        assert not alive, f"left running: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for pid_file in (tmp_path / "demo" / "nodes").glob("*/node.pid"):
            pid = int(pid_file.read_text().strip() or 0)
            if pid and _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
