"""An in-process fake consortium for client tests: real keys, real signatures, real receipts.

FakeChain plays the 4 replicas: it turns batches into blocks, signs 2f+1 commits and f+1
attestations with the members' node keys, and keeps receipts. MiniLedger is a small, obviously
written ledger (not the node's) so CLI tests see balances move. FakeNode is a LedgerService
servicer over a shared chain, with knobs for a node that is down, refuses, or lies. Each bank has
its own CA in genesis, and ``serve`` runs every fake node over TLS with a bank's certificate,
as real nodes run.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import grpc

from ledger import merkle, pki, tls
from ledger.crypto import DOMAIN_CONSENSUS, DOMAIN_TX, SigningKey, verify
from ledger.genesis import Genesis, parse_genesis
from ledger.v1 import api_pb2, api_pb2_grpc, consensus_pb2, tx_pb2

R = tx_pb2.ResultCode
UNRECORDED = {R.MALFORMED, R.WRONG_CHAIN, R.BAD_SIGNATURE, R.MISSING_SIGNATURE}
Code: TypeAlias = tx_pb2.ResultCode.ValueType


@dataclass
class Bank:
    member_id: str
    node_key: SigningKey
    operator_key: SigningKey
    ca: pki.Issued  # the bank's certificate authority
    tls: pki.Issued  # its node's certificate (127.0.0.1), issued by ca


def make_bank(member_id: str) -> Bank:
    ca = pki.make_ca(member_id)
    node_tls = pki.issue_node_cert(ca, member_id, ("127.0.0.1",))
    return Bank(member_id, SigningKey.generate(), SigningKey.generate(), ca, node_tls)


def make_banks(count: int = 4) -> list[Bank]:
    return [make_bank(f"BANK-{chr(65 + i)}") for i in range(count)]


def make_genesis(banks: Sequence[Bank], chain_id: str = "test-chain") -> Genesis:
    currencies = ["USD", "EUR", "GBP", "JPY"]
    members = []
    for i, b in enumerate(banks):
        ccy = currencies[i % len(currencies)]
        members.append(
            {
                "member_id": b.member_id,
                "replica": i,
                "node_key": b.node_key.public_key.hex(),
                "operator_key": b.operator_key.public_key.hex(),
                "host": "127.0.0.1",
                "replica_port": 7000 + i,
                "api_port": 7100 + i,
                "assets": [{"asset": f"{ccy}.{b.member_id}", "scale": 0 if ccy == "JPY" else 2}],
                "ca_cert": b.ca.cert_pem.decode(),
            }
        )
    return parse_genesis({"chain_id": chain_id, "f": (len(banks) - 1) // 3, "members": members})


def sign_consensus(
    genesis: Genesis, key: SigningKey, replica: int, msg: consensus_pb2.ConsensusMessage
) -> consensus_pb2.SignedMessage:
    body = msg.SerializeToString()
    return consensus_pb2.SignedMessage(
        body=body, signer=replica, signature=key.sign(DOMAIN_CONSENSUS, genesis.chain_id, body)
    )


def batch_hash(envelopes: Sequence[bytes]) -> bytes:
    h = hashlib.sha256()
    for e in envelopes:
        h.update(len(e).to_bytes(4, "big") + e)
    return h.digest()


@dataclass
class Block:
    header_bytes: bytes
    envelopes: list[bytes]
    tx_ids: list[bytes]
    results: list[bytes]
    certificate: consensus_pb2.CommitCertificate
    attestations: list[consensus_pb2.SignedMessage]


class FakeChain:
    """Blocks signed by real member keys. Thread-safe; ``committed`` notifies each new block."""

    def __init__(
        self, banks: Sequence[Bank] | None = None, ledger: bool = True, chain_id: str = "test-chain"
    ) -> None:
        self.banks = list(banks or make_banks())
        self.genesis = make_genesis(self.banks, chain_id)
        self.blocks: list[Block] = []
        self.receipts: dict[bytes, api_pb2.Receipt] = {}
        self.recorded: set[bytes] = set()
        self.envelope_of: dict[bytes, bytes] = {}
        self.ledger = MiniLedger(self.genesis) if ledger else None
        self.committed = threading.Condition()
        self.view = 0
        self.time_ms = 1_700_000_000_000

    def digest_of(self, header_bytes: bytes) -> bytes:
        return hashlib.sha256(header_bytes).digest()

    def commit_msg(self, replica: int, view: int, seq: int, digest: bytes) -> consensus_pb2.SignedMessage:
        msg = consensus_pb2.ConsensusMessage(
            commit=consensus_pb2.Commit(view=view, sequence=seq, digest=digest, replica=replica)
        )
        return sign_consensus(self.genesis, self.banks[replica].node_key, replica, msg)

    def attest_msg(
        self, replica: int, seq: int, digest: bytes, results_root: bytes, state_root: bytes
    ) -> consensus_pb2.SignedMessage:
        msg = consensus_pb2.ConsensusMessage(
            attestation=consensus_pb2.Attestation(
                sequence=seq, digest=digest, results_root=results_root, state_root=state_root, replica=replica
            )
        )
        return sign_consensus(self.genesis, self.banks[replica].node_key, replica, msg)

    def commit(self, envelopes: Sequence[bytes], results: Sequence[tuple[Code, str]] | None = None) -> Block:
        """Make the next block of ``envelopes``; results from MiniLedger unless given."""
        with self.committed:
            height = len(self.blocks) + 1
            self.time_ms += 1000
            tx_ids = [hashlib.sha256(_envelope(e).body).digest() for e in envelopes]
            result_bytes: list[bytes] = []
            for i, (env, tx_id) in enumerate(zip(envelopes, tx_ids, strict=True)):
                if tx_id in self.recorded:  # executed before: the first result again
                    result_bytes.append(self.receipts[tx_id].result_bytes)
                    continue
                if results is not None:
                    code, detail = results[i]
                elif self.ledger is not None:
                    code, detail = self.ledger.execute(env, self.time_ms)
                else:
                    code, detail = R.OK, ""
                result_bytes.append(
                    tx_pb2.TxResult(
                        tx_id=tx_id,
                        code=code,
                        detail=detail,
                        height=height,
                        index=i,
                        final=code not in UNRECORDED,
                    ).SerializeToString()
                )
            header = tx_pb2.BlockHeader(
                chain_id=self.genesis.chain_id,
                height=height,
                timestamp_ms=self.time_ms,
                tx_count=len(envelopes),
                tx_root=merkle.root(tx_ids),
                batch_hash=batch_hash(envelopes),
            ).SerializeToString()
            digest = self.digest_of(header)
            q, f = self.genesis.quorum, self.genesis.f
            cert = consensus_pb2.CommitCertificate(
                commits=[self.commit_msg(r, self.view, height, digest) for r in range(q)]
            )
            results_root = merkle.root(result_bytes)
            state_root = hashlib.sha256(b"state" + height.to_bytes(8, "big")).digest()
            atts = [self.attest_msg(r, height, digest, results_root, state_root) for r in range(f + 1)]
            block = Block(header, list(envelopes), tx_ids, result_bytes, cert, atts)
            self.blocks.append(block)
            _, tx_proofs = merkle.all_proofs(tx_ids)
            _, res_proofs = merkle.all_proofs(result_bytes)
            for i, tx_id in enumerate(tx_ids):
                if tx_id in self.recorded:
                    continue
                res = tx_pb2.TxResult()
                res.ParseFromString(result_bytes[i])
                # Like the node: an authorized result is final; an unauthorized one is served
                # (latest first) but a later well-signed copy can still execute.
                if res.final:
                    self.recorded.add(tx_id)
                self.receipts[tx_id] = api_pb2.Receipt(
                    result=res,
                    result_bytes=result_bytes[i],
                    header=header,
                    certificate=cert,
                    tx_proof=tx_proofs[i],
                    result_proof=res_proofs[i],
                    attestations=atts,
                )
                self.envelope_of[tx_id] = envelopes[i]
            self.committed.notify_all()
            return block

    def wait_receipt(self, tx_id: bytes, timeout_s: float) -> api_pb2.Receipt | None:
        with self.committed:
            self.committed.wait_for(lambda: tx_id in self.receipts, timeout=timeout_s)
            return self.receipts.get(tx_id)


def _envelope(raw: bytes) -> tx_pb2.Envelope:
    env = tx_pb2.Envelope()
    env.ParseFromString(raw)
    return env


def stateless_check(genesis: Genesis, raw: bytes) -> str | None:
    """What a node's API refuses before consensus: None when the envelope is admissible."""
    try:
        env = _envelope(raw)
        body = tx_pb2.TxBody()
        body.ParseFromString(env.body)
    except Exception:
        return "envelope does not parse"
    if body.chain_id != genesis.chain_id:
        return "wrong chain"
    if not env.signatures:
        return "no signatures"
    for s in env.signatures:
        if not verify(s.public_key, s.signature, DOMAIN_TX, genesis.chain_id, env.body):
            return "bad signature"
    return None


@dataclass
class MiniAccount:
    member_id: str
    owner: bytes
    frozen: bool = False
    available: dict[str, int] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)


class MiniLedger:
    """Enough of the ledger's rules for client tests; the node's ledger is tested elsewhere."""

    def __init__(self, genesis: Genesis) -> None:
        self.genesis = genesis
        self.accounts: dict[str, MiniAccount] = {}
        self.minted: dict[str, int] = {}
        self.redeemed: dict[str, int] = {}
        self.refs: set[tuple[str, str]] = set()
        self.escrows: dict[str, tuple[str, str, str, int, bool]] = {}  # id -> from, to, asset, amount, open

    def execute(self, raw: bytes, now_ms: int) -> tuple[Code, str]:
        env = _envelope(raw)
        body = tx_pb2.TxBody()
        body.ParseFromString(env.body)
        signers = {s.public_key for s in env.signatures}
        kind = body.WhichOneof("op")
        op: Any = getattr(body, kind or "memo")
        need: list[bytes] = []
        if kind == "open_account":
            m = self.genesis.member(op.member_id)
            if m is None:
                return R.NOT_MEMBER, op.member_id
            need = [m.operator_key]
        elif kind in ("set_frozen", "mint"):
            if kind == "mint":
                asset = self.genesis.asset(op.asset)
                if asset is None:
                    return R.UNKNOWN_ASSET, op.asset
                need = [self.genesis.member(asset.issuer).operator_key]  # type: ignore[union-attr]
            acc = self.accounts.get(op.account_id)
            if acc is None:
                return R.UNKNOWN_ACCOUNT, op.account_id
            if kind == "set_frozen":
                need = [self.genesis.member(acc.member_id).operator_key]  # type: ignore[union-attr]
        elif kind == "transfer":
            for leg in op.legs:
                for a in (leg.from_account, leg.to_account):
                    if a not in self.accounts:
                        return R.UNKNOWN_ACCOUNT, a
            need = [self.accounts[leg.from_account].owner for leg in op.legs]
        elif kind in ("redeem", "escrow_create"):
            a = op.account_id if kind == "redeem" else op.from_account
            if a not in self.accounts:
                return R.UNKNOWN_ACCOUNT, a
            need = [self.accounts[a].owner]
        elif kind in ("escrow_post", "escrow_void"):
            e = self.escrows.get(op.escrow_id)
            if e is None:
                return R.UNKNOWN_ESCROW, op.escrow_id
            need = [self.accounts[e[0]].owner]
            if kind == "escrow_void" and self.accounts[e[1]].owner in signers:
                need = [self.accounts[e[1]].owner]
        else:
            return R.MALFORMED, "no op"
        missing = [k for k in need if k not in signers]
        if missing:
            return R.MISSING_SIGNATURE, missing[0].hex()[:16]
        return self._apply(kind, op, now_ms)

    def _apply(self, kind: str, op: Any, now_ms: int) -> tuple[Code, str]:
        if kind == "open_account":
            if op.account_id in self.accounts:
                return R.ACCOUNT_EXISTS, op.account_id
            self.accounts[op.account_id] = MiniAccount(op.member_id, op.owner_key)
            return R.OK, ""
        if kind == "set_frozen":
            self.accounts[op.account_id].frozen = op.frozen
            return R.OK, ""
        if kind == "mint":
            if (op.asset, op.deposit_ref) in self.refs:
                return R.DUPLICATE_REFERENCE, op.deposit_ref
            acc = self.accounts[op.account_id]
            if acc.frozen:
                return R.ACCOUNT_FROZEN, op.account_id
            self.refs.add((op.asset, op.deposit_ref))
            acc.available[op.asset] = acc.available.get(op.asset, 0) + op.amount
            self.minted[op.asset] = self.minted.get(op.asset, 0) + op.amount
            return R.OK, ""
        if kind == "transfer":
            moves = [(leg.from_account, leg.to_account, leg.asset, leg.amount) for leg in op.legs]
            return self._move(moves)
        if kind == "redeem":
            acc = self.accounts[op.account_id]
            if acc.available.get(op.asset, 0) < op.amount:
                return R.INSUFFICIENT_FUNDS, op.account_id
            acc.available[op.asset] -= op.amount
            self.redeemed[op.asset] = self.redeemed.get(op.asset, 0) + op.amount
            return R.OK, ""
        if kind == "escrow_create":
            if op.escrow_id in self.escrows:
                return R.ESCROW_EXISTS, op.escrow_id
            if op.to_account not in self.accounts:
                return R.UNKNOWN_ACCOUNT, op.to_account
            payer = self.accounts[op.from_account]
            if payer.available.get(op.asset, 0) < op.amount:
                return R.INSUFFICIENT_FUNDS, op.from_account
            payer.available[op.asset] -= op.amount
            payer.held[op.asset] = payer.held.get(op.asset, 0) + op.amount
            self.escrows[op.escrow_id] = (op.from_account, op.to_account, op.asset, op.amount, True)
            return R.OK, ""
        frm, to, asset, amount, is_open = self.escrows[op.escrow_id]
        if not is_open:
            return R.ESCROW_CLOSED, op.escrow_id
        paid = op.amount if kind == "escrow_post" else 0
        if paid > amount:
            return R.AMOUNT_OUT_OF_RANGE, "more than held"
        payer, payee = self.accounts[frm], self.accounts[to]
        payer.held[asset] -= amount
        payer.available[asset] = payer.available.get(asset, 0) + amount - paid
        payee.available[asset] = payee.available.get(asset, 0) + paid
        self.escrows[op.escrow_id] = (frm, to, asset, amount, False)
        return R.OK, ""

    def _move(self, moves: list[tuple[str, str, str, int]]) -> tuple[Code, str]:
        for frm, to, _, _ in moves:
            for a in (frm, to):
                if self.accounts[a].frozen:
                    return R.ACCOUNT_FROZEN, a
        need: dict[tuple[str, str], int] = {}
        for frm, _, asset, amount in moves:
            need[(frm, asset)] = need.get((frm, asset), 0) + amount
        for (frm, asset), amount in need.items():
            if self.accounts[frm].available.get(asset, 0) < amount:
                return R.INSUFFICIENT_FUNDS, frm
        for frm, to, asset, amount in moves:
            self.accounts[frm].available[asset] -= amount
            acc = self.accounts[to]
            acc.available[asset] = acc.available.get(asset, 0) + amount
        return R.OK, ""


Tamper = Callable[[api_pb2.Receipt], api_pb2.Receipt]


class FakeNode(api_pb2_grpc.LedgerServiceServicer):
    """A LedgerService over a shared FakeChain.

    mode: "honest"; "down" (every call UNAVAILABLE); "stall" (every call hangs until the test
    ends, so the caller's deadline passes: a paused process); "refuse" (Submit INVALID_ARGUMENT);
    "hold" (accepts submissions but never gets them committed: they stay pending); "inflate"
    (lies about balances); "skip" (leaves the first block out of a GetBlocks range). ``tamper`` rewrites every
    receipt this node serves: a lying node.
    """

    def __init__(self, chain: FakeChain, mode: str = "honest", tamper: Tamper | None = None) -> None:
        self.chain = chain
        self.mode = mode
        self.tamper = tamper
        self.submits = 0
        self.calls = 0  # every call, answered or not
        self.held: list[bytes] = []
        self.released = threading.Event()  # set by serve() on the way out: a stall ends

    def _gate(self, context: grpc.ServicerContext) -> None:
        self.calls += 1
        if self.mode == "stall":
            self.released.wait()
        if self.mode in ("down", "stall"):
            context.abort(grpc.StatusCode.UNAVAILABLE, "node is down")

    def Submit(self, request: api_pb2.SubmitRequest, context: grpc.ServicerContext) -> api_pb2.SubmitResponse:
        self._gate(context)
        self.submits += 1
        raw = request.envelope.SerializeToString()
        problem = stateless_check(self.chain.genesis, raw)
        if self.mode == "refuse":
            problem = "refused by a lying node"
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        tx_id = hashlib.sha256(request.envelope.body).digest()
        if self.mode == "hold":
            self.held.append(raw)
        elif tx_id not in self.chain.recorded:
            self.chain.commit([raw])
        return api_pb2.SubmitResponse(tx_id=tx_id)

    def SubmitBatch(
        self, request: api_pb2.SubmitBatchRequest, context: grpc.ServicerContext
    ) -> api_pb2.SubmitBatchResponse:
        """Admit each envelope on its own; commit the admitted ones together in one block."""
        self._gate(context)
        out = api_pb2.SubmitBatchResponse()
        admitted: list[bytes] = []
        for env in request.envelopes:
            self.submits += 1
            raw = env.SerializeToString()
            item = out.items.add(tx_id=hashlib.sha256(env.body).digest())
            problem = (
                "refused by a lying node"
                if self.mode == "refuse"
                else stateless_check(self.chain.genesis, raw)
            )
            if problem:
                item.error, item.status_code = problem, grpc.StatusCode.INVALID_ARGUMENT.value[0]
                continue
            item.accepted = True
            if item.tx_id not in self.chain.recorded and raw not in admitted:
                admitted.append(raw)
        if admitted and self.mode == "hold":
            self.held.extend(admitted)
        elif admitted:
            self.chain.commit(admitted)
        return out

    def WaitReceipts(
        self, request: api_pb2.WaitReceiptsRequest, context: grpc.ServicerContext
    ) -> Iterator[api_pb2.Receipt]:
        self._gate(context)
        for tx_id in request.tx_ids:
            receipt = self._receipt(tx_id, min(request.timeout_ms, 5000) / 1000)
            if receipt is not None:
                yield receipt

    def WaitReceiptBatches(
        self, request: api_pb2.WaitReceiptsRequest, context: grpc.ServicerContext
    ) -> Iterator[api_pb2.ReceiptBatch]:
        for receipt in self.WaitReceipts(request, context):
            yield api_pb2.ReceiptBatch(receipts=[receipt])

    def SubmitStream(
        self, request_iterator: Iterator[api_pb2.SubmitBatchRequest], context: grpc.ServicerContext
    ) -> Iterator[api_pb2.SubmitStreamReply]:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the fake node serves SubmitBatch, not SubmitStream")

    def _receipt(self, tx_id: bytes, timeout_s: float) -> api_pb2.Receipt | None:
        receipt = self.chain.wait_receipt(tx_id, timeout_s)
        if receipt is not None and self.tamper is not None:
            copy = api_pb2.Receipt()
            copy.CopyFrom(receipt)
            receipt = self.tamper(copy)
        return receipt

    def WaitReceipt(
        self, request: api_pb2.WaitReceiptRequest, context: grpc.ServicerContext
    ) -> api_pb2.Receipt:
        self._gate(context)
        receipt = self._receipt(request.tx_id, min(request.timeout_ms, 5000) / 1000)
        if receipt is None:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no receipt yet")
        return receipt

    def GetTransaction(
        self, request: api_pb2.GetTransactionRequest, context: grpc.ServicerContext
    ) -> api_pb2.GetTransactionResponse:
        self._gate(context)
        receipt = self._receipt(request.tx_id, 0)
        if receipt is None:
            held = any(hashlib.sha256(_envelope(raw).body).digest() == request.tx_id for raw in self.held)
            if held and request.include_pending:
                return api_pb2.GetTransactionResponse(status=api_pb2.TX_STATUS_PENDING)
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown transaction" + (" (pending)" if held else ""))
        return api_pb2.GetTransactionResponse(
            receipt=receipt,
            envelope=_envelope(self.chain.envelope_of[request.tx_id]),
            status=api_pb2.TX_STATUS_COMMITTED,
        )

    def GetAccount(
        self, request: api_pb2.GetAccountRequest, context: grpc.ServicerContext
    ) -> api_pb2.Account:
        self._gate(context)
        self._at(request.min_height, context)
        assert self.chain.ledger is not None
        acc = self.chain.ledger.accounts.get(request.account_id)
        if acc is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown account {request.account_id}")
        assets = sorted(set(acc.available) | set(acc.held))
        inflate = 10**6 if self.mode == "inflate" else 0  # a node lying about balances
        return api_pb2.Account(
            account_id=request.account_id,
            member_id=acc.member_id,
            owner_key=acc.owner,
            frozen=acc.frozen,
            balances=[
                api_pb2.Balance(asset=a, available=acc.available.get(a, 0) + inflate, held=acc.held.get(a, 0))
                for a in assets
            ],
            height=len(self.chain.blocks),
        )

    def _at(self, min_height: int, context: grpc.ServicerContext) -> None:
        if min_height > len(self.chain.blocks):
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"node is at height {len(self.chain.blocks)} < min_height {min_height}",
            )

    def GetBlock(
        self, request: api_pb2.GetBlockRequest, context: grpc.ServicerContext
    ) -> api_pb2.GetBlockResponse:
        self._gate(context)
        if not 1 <= request.height <= len(self.chain.blocks):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no block {request.height}")
        b = self.chain.blocks[request.height - 1]
        results = []
        for r in b.results:
            res = tx_pb2.TxResult()
            res.ParseFromString(r)
            results.append(res)
        return api_pb2.GetBlockResponse(
            block=consensus_pb2.CertifiedBlock(
                header=b.header_bytes,
                batch=consensus_pb2.Batch(envelopes=list(b.envelopes)),
                certificate=b.certificate,
            ),
            results=results,
            attestations=b.attestations,
        )

    def GetBlocks(
        self, request: api_pb2.GetBlocksRequest, context: grpc.ServicerContext
    ) -> api_pb2.GetBlocksResponse:
        self._gate(context)
        last = len(self.chain.blocks)
        heights = range(request.from_height, min(last, request.from_height + request.max_blocks - 1) + 1)
        blocks = [self.GetBlock(api_pb2.GetBlockRequest(height=h), context) for h in heights]
        if self.mode == "skip" and blocks:  # a liar leaving out the first block of the range
            blocks = blocks[1:]
        return api_pb2.GetBlocksResponse(
            blocks=blocks, next_height=request.from_height + len(heights), last_height=last
        )

    def GetSupply(
        self, request: api_pb2.GetSupplyRequest, context: grpc.ServicerContext
    ) -> api_pb2.GetSupplyResponse:
        self._gate(context)
        self._at(request.min_height, context)
        assert self.chain.ledger is not None
        led = self.chain.ledger
        out = []
        for a in self.chain.genesis.assets:
            minted, redeemed = led.minted.get(a.asset, 0), led.redeemed.get(a.asset, 0)
            out.append(
                api_pb2.AssetSupply(
                    asset=a.asset,
                    issuer=a.issuer,
                    scale=a.scale,
                    minted=minted,
                    redeemed=redeemed,
                    outstanding=minted - redeemed,
                )
            )
        return api_pb2.GetSupplyResponse(assets=out, height=len(self.chain.blocks))

    # History, escrows and the feed are tested against real nodes (tests/node/test_history_live.py).
    def GetAccountHistory(
        self, request: api_pb2.GetAccountHistoryRequest, context: grpc.ServicerContext
    ) -> api_pb2.GetAccountHistoryResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake")

    def GetEscrow(self, request: api_pb2.GetEscrowRequest, context: grpc.ServicerContext) -> api_pb2.Escrow:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake")

    def GetBalanceProof(
        self, request: api_pb2.GetBalanceProofRequest, context: grpc.ServicerContext
    ) -> api_pb2.BalanceProof:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake (tests/node/test_balance_proof.py)")

    def ListEscrows(
        self, request: api_pb2.ListEscrowsRequest, context: grpc.ServicerContext
    ) -> api_pb2.ListEscrowsResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake")

    def Feed(
        self, request: api_pb2.FeedRequest, context: grpc.ServicerContext
    ) -> Iterator[api_pb2.FeedMessage]:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake")

    def GetStatus(
        self, request: api_pb2.GetStatusRequest, context: grpc.ServicerContext
    ) -> api_pb2.NodeStatus:
        self._gate(context)
        return api_pb2.NodeStatus(
            member_id="BANK-A",
            replica=0,
            view=self.chain.view,
            primary=0,
            last_executed=len(self.chain.blocks),
            chain_id=self.chain.genesis.chain_id,
            state_root=b"\x01" * 32,
        )


def tls_port(server: grpc.Server, bank: Bank, genesis: Genesis) -> int:
    """Listen on a free 127.0.0.1 port over TLS with the bank's node certificate."""
    return server.add_secure_port(
        "127.0.0.1:0", tls.server_credentials(genesis, bank.tls, require_client_auth=False)
    )


@contextmanager
def serve(nodes: Sequence[FakeNode]) -> Iterator[list[str]]:
    """Run each fake node on its own 127.0.0.1 port, over TLS with the certificate of bank
    i mod n; yield their endpoints; always stop them."""
    servers: list[grpc.Server] = []
    endpoints: list[str] = []
    try:
        for i, node in enumerate(nodes):
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
            api_pb2_grpc.add_LedgerServiceServicer_to_server(node, server)
            port = tls_port(server, node.chain.banks[i % len(node.chain.banks)], node.chain.genesis)
            server.start()
            servers.append(server)
            endpoints.append(f"127.0.0.1:{port}")
        yield endpoints
    finally:
        for node in nodes:
            node.released.set()
        for server in servers:
            server.stop(grace=None).wait()


# --- lies and dead ends for tests -------------------------------------------------------------


def forge_certificate(r: api_pb2.Receipt) -> api_pb2.Receipt:
    r.certificate.commits[0].signature = bytes(64)
    return r


def lie_about_result(r: api_pb2.Receipt) -> api_pb2.Receipt:
    r.result.code = tx_pb2.INSUFFICIENT_FUNDS
    r.result_bytes = r.result.SerializeToString()
    return r


def drop_commits(r: api_pb2.Receipt) -> api_pb2.Receipt:
    del r.certificate.commits[1:]
    return r


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed
