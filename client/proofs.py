"""Offline balance proofs (docs/PROTOCOL.md, section 11): verify with genesis alone.

A BalanceProof is trusted when:
  * 2f+1 distinct members signed Checkpoints at its sequence naming one (state root, tree
    root): f+1 of them are honest, so the tree root is the one the ledger computed;
  * walking the tree from that root, with the proof's nodes (found by hash), to each key the
    proof covers (the account record, each genesis asset's available and held amounts) finds
    exactly the claimed value (salted hash) or, for an amount of zero or a missing account,
    nothing.
Each failure raises ProofError with a stable ``reason``: malformed_proof, wrong_chain,
other_account, the certificate's (non_member, bad_signature, not_checkpoint, bad_signer,
other_sequence, duplicate_signer, too_few_checkpoints, checkpoints_disagree), missing_node,
account_mismatch, balance_mismatch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from client.verify import member_signature
from ledger import block
from ledger import statetree as lt
from ledger.genesis import Genesis
from ledger.statetree import ProofError
from ledger.v1 import api_pb2, consensus_pb2

PROOF_BYTES_MAX = 1 << 20
NODES_PER_KEY_MAX = 16  # a path is ~log16(keys) nodes: 16 covers 2^64 keys


@dataclass(frozen=True)
class ProvenBalance:
    asset: str
    available: int
    held: int


@dataclass(frozen=True)
class VerifiedBalances:
    """An account as of a certified checkpoint."""

    account_id: str
    sequence: int  # the checkpoint's height: the balances are the state after that block
    state_root: bytes
    tree_root: bytes
    exists: bool
    member_id: str
    owner_key: bytes
    frozen: bool
    balances: tuple[ProvenBalance, ...]  # every genesis asset, by name (zeros included)
    signers: tuple[int, ...]  # the members whose checkpoints certify it


def verify_checkpoint(
    genesis: Genesis, sequence: int, checkpoints: Sequence[consensus_pb2.SignedMessage]
) -> tuple[bytes, bytes, tuple[int, ...]]:
    """(state root, tree root, signers) that 2f+1 distinct members signed at ``sequence``: the
    certificate rule of ledger/block.py (valid entries counted once per member, the rest
    ignored), over Checkpoints."""
    if len(checkpoints) > 2 * genesis.n:
        raise ProofError("malformed_proof", f"{len(checkpoints)} checkpoints for n={genesis.n}")
    verify = member_signature(genesis)
    votes: block.Votes[tuple[bytes, bytes]] = block.Votes()
    for i, sm in enumerate(checkpoints):
        what = f"checkpoint {i}"
        raw = sm.SerializeToString()
        try:
            signer, msg = block.signed_message(raw, genesis.n, verify, what)
        except block.ProofError as exc:
            votes.rejected.append(exc)
            continue
        if msg.WhichOneof("kind") != "checkpoint":
            votes.reject("not_checkpoint", f"{what}: is a {msg.WhichOneof('kind')}, not a checkpoint")
            continue
        c = msg.checkpoint
        if c.replica != signer:
            votes.reject("bad_signer", f"{what}: names replica {c.replica} but is signed by {signer}")
        elif c.sequence != sequence:
            votes.reject("other_sequence", f"{what}: for sequence {c.sequence}, the proof is at {sequence}")
        else:
            votes.add(signer, (bytes(c.state_root), bytes(c.tree_root)), raw, what)
    try:
        quorum = votes.winner(genesis.quorum, "checkpoints", "checkpoints_disagree", "too_few_checkpoints")
    except block.ProofError as exc:
        raise ProofError(exc.reason, str(exc)) from exc
    return quorum.vote[0], quorum.vote[1], quorum.signers


def verify_balance_proof(
    genesis: Genesis, proof: api_pb2.BalanceProof | bytes, account_id: str | None = None
) -> VerifiedBalances:
    """Check ``proof`` (a BalanceProof or its bytes) against genesis alone; ``account_id``:
    the account asked for, when known."""
    if isinstance(proof, bytes):
        if len(proof) > PROOF_BYTES_MAX:
            raise ProofError("malformed_proof", f"proof larger than {PROOF_BYTES_MAX} bytes")
        try:
            proof = api_pb2.BalanceProof.FromString(proof)
        except DecodeError as exc:
            raise ProofError("malformed_proof", f"not a serialized BalanceProof ({exc})") from exc
    if proof.chain_id != genesis.chain_id:
        raise ProofError("wrong_chain", f"proof is of chain {proof.chain_id!r}, not {genesis.chain_id!r}")
    if account_id is not None and proof.account_id != account_id:
        raise ProofError("other_account", f"proof is of account {proof.account_id!r}, not {account_id!r}")
    if not proof.account_id or len(proof.account_id.encode()) > genesis.limits.id_bytes_max:
        raise ProofError("malformed_proof", "account id empty or too long")
    state_root, tree_root, signers = verify_checkpoint(genesis, proof.sequence, proof.checkpoints)
    keys_count = 1 + 2 * len(genesis.assets)
    nodes = lt.index_nodes(proof.nodes, NODES_PER_KEY_MAX * keys_count)
    claimed: dict[str, tuple[int, int]] = {}
    for b in proof.balances:
        if genesis.asset(b.asset) is None or b.asset in claimed:
            raise ProofError("malformed_proof", f"balance of {b.asset!r}: not a genesis asset, or twice")
        claimed[b.asset] = (b.available, b.held)
    salts = list(proof.salts)
    if len(salts) > keys_count or any(len(s) != lt.SALT_BYTES for s in salts):
        raise ProofError("malformed_proof", f"salts: at most {keys_count} of {lt.SALT_BYTES} bytes")

    def check(key: bytes, value: bytes | None, reason: str) -> None:
        found = lt.lookup(tree_root, key, nodes)
        if found is None:
            if value is not None:
                raise ProofError(reason, f"the certified state has no {key!r}")
            return
        if not salts:
            raise ProofError("malformed_proof", "fewer salts than keys the tree holds")
        if value is None or lt.value_hash(salts.pop(0), value) != found:
            raise ProofError(reason, f"the certified state holds another value under {key!r}")

    account = bytes(proof.account) or None
    check(lt.account_key(proof.account_id), account, "account_mismatch")
    balances = []
    for a in genesis.assets:
        available, held = claimed.get(a.asset, (0, 0))
        check(lt.balance_key(proof.account_id, a.asset), lt.amount_value(available), "balance_mismatch")
        check(lt.held_key(proof.account_id, a.asset), lt.amount_value(held), "balance_mismatch")
        balances.append(ProvenBalance(a.asset, available, held))
    if salts:
        raise ProofError("malformed_proof", "more salts than keys the tree holds")
    member_id, owner_key, frozen = "", b"", False
    if account is not None:
        try:
            member_id, owner_key, frozen = lt.decode_account(account)
        except ValueError as exc:  # certified, so only a ledger bug could get here
            raise ProofError("malformed_proof", f"account record: {exc}") from exc
    return VerifiedBalances(
        account_id=proof.account_id,
        sequence=int(proof.sequence),
        state_root=state_root,
        tree_root=tree_root,
        exists=account is not None,
        member_id=member_id,
        owner_key=owner_key,
        frozen=frozen,
        balances=tuple(balances),
        signers=signers,
    )
