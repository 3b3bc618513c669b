"""GetBalanceProof: an account's balances as of the latest stable checkpoint, with the state
tree's nodes and the checkpoint's 2f+1 signatures (docs/PROTOCOL.md, section 11). Read like
GetAccount: the account's owner key or the operator key of its bank."""

from __future__ import annotations

import grpc

from ledger import statetree as lt
from ledger.genesis import Genesis
from ledger.v1 import api_pb2, consensus_pb2
from node.api.authority import ReadAuthority
from node.api.common import Abort, parse
from node.api.port import NodePort
from node.app import queries
from node.app import statetree as tree
from node.pbft import journal
from node.pbft.wire import decode_signed_list
from node.storage import blocks
from node.storage.kv import KVReader

# The tree is built when a checkpoint executes; its certificate follows a round later.
STABLE_WAIT_S = 3.0
STABLE_KEY = blocks.JOURNAL + journal.STABLE


def proof_keys(genesis: Genesis, account_id: str) -> list[bytes]:
    """The state keys a balance proof covers: the account record, then each genesis asset's
    available and held amounts."""
    keys = [lt.account_key(account_id)]
    for a in genesis.assets:
        keys += [lt.balance_key(account_id, a.asset), lt.held_key(account_id, a.asset)]
    return keys


def stable_checkpoint(r: KVReader) -> tuple[int, bytes, tuple[bytes, ...]]:
    """(sequence, tree root, the 2f+1 signed checkpoints) of the stable checkpoint here."""
    raw = r.get(STABLE_KEY)
    if raw is None:
        return 0, b"", ()
    proof = decode_signed_list(raw)
    first = consensus_pb2.SignedMessage.FromString(proof[0])
    checkpoint = consensus_pb2.ConsensusMessage.FromString(first.body).checkpoint
    return int(checkpoint.sequence), bytes(checkpoint.tree_root), proof


def build_balance_proof(genesis: Genesis, r: KVReader, account_id: str) -> api_pb2.BalanceProof | None:
    """The proof as of the tree in ``r``, or None when the stable checkpoint is not the tree's
    height (not stable yet, or this node is behind it)."""
    height, root = tree.tree_root(r)
    sequence, certified, certificate = stable_checkpoint(r)
    if height == 0 or sequence != height:
        return None
    if certified != root:  # our state diverged from the quorum's (state_diverged): a bug
        raise Abort(
            grpc.StatusCode.INTERNAL,
            f"this node's state tree at {height} is not the one 2f+1 members certified; ask another node",
        )
    out = api_pb2.BalanceProof(chain_id=genesis.chain_id, account_id=account_id, sequence=sequence)
    for raw in certificate:
        out.checkpoints.add().MergeFromString(raw)
    keys = proof_keys(genesis, account_id)
    values = {key: tree.proven_value(r, key) for key in keys}
    account = values[keys[0]]
    if account is not None:
        out.account = account[1]
    for a in genesis.assets:
        available = values[lt.balance_key(account_id, a.asset)]
        held = values[lt.held_key(account_id, a.asset)]
        if available is None and held is None:
            continue
        out.balances.add(
            asset=a.asset,
            available=0 if available is None else int.from_bytes(available[1], "big"),
            held=0 if held is None else int.from_bytes(held[1], "big"),
        )
    out.salts.extend(v[0] for v in values.values() if v is not None)
    out.nodes.extend(tree.prove(r, keys))
    return out


class BalanceProofs:
    def __init__(self, genesis: Genesis, node: NodePort, authority: ReadAuthority) -> None:
        self.genesis = genesis
        self.node = node
        self.authority = authority
        self.stable_wait_s = STABLE_WAIT_S

    async def get_balance_proof(self, raw: bytes, token: bytes | None) -> bytes:
        req = parse(api_pb2.GetBalanceProofRequest, raw)
        account_id = req.account_id
        if not account_id or len(account_id.encode()) > self.genesis.limits.id_bytes_max:
            raise Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"account_id must be 1..{self.genesis.limits.id_bytes_max} bytes",
            )
        caller = self.authority.authenticate(
            token, "GetBalanceProof", account_id, "the account's owner key or the operator key of its bank"
        )
        with self.node.read() as r:
            acct = queries.account(r, account_id)
        found = (acct.owner_key, acct.member_id) if acct is not None else None
        self.authority.may_read_account(caller, found, f"no account {account_id!r}")
        for _ in range(2):
            with self.node.read() as r:
                proof = build_balance_proof(self.genesis, r, account_id)
                height, _ = tree.tree_root(r)
            if proof is not None:
                return proof.SerializeToString()
            if not await self.node.wait_stable(height, self.stable_wait_s):
                break
        raise Abort(
            grpc.StatusCode.UNAVAILABLE,
            f"no stable checkpoint at this node's state tree height {height} yet; ask again or ask another node",
        )
