"""Who may have the consortium spend anything on a transaction: the keys admission knows.

Execution records a result only for an authorized transaction (node/app/rules.py), so a
stranger can never have anything stored as final. Admission goes further and refuses, before
any signature is verified, an envelope that no known key signed (UNAUTHENTICATED): such a
transaction could not be authorized, and would cost every node a signature check, a place in a
block and disk. Known keys:

- a member's operator key (genesis);
- the owner key of an account that is not frozen (the state's owner key index, s/k/): a bank
  that freezes every account of a key that misbehaves makes the key unknown again;
- the owner key of an OpenAccount this node admitted, signed by that member's operator, until
  it executes (bounded): a new client's first transfer may follow its account opening without
  waiting for the block.

This is a node-local rule (each node reads its own state), not consensus: a transaction one
node admits may be refused by another a moment later; execution alone decides the result.
"""

from __future__ import annotations

from ledger.genesis import Genesis
from node.app import state as st
from node.app.tx import CheckedTx, OpenAccount
from node.app.validate import KnownKey
from node.storage.kv import KVReader

VOUCHED_KEYS_MAX = 10_000  # owner keys of admitted, not yet executed account openings


class KnownKeys:
    def __init__(self, genesis: Genesis) -> None:
        self._genesis = genesis
        self._operators = frozenset(m.operator_key for m in genesis.members)
        self._vouched: dict[bytes, None] = {}  # insertion order: the oldest leaves first

    def predicate(self, r: KVReader) -> KnownKey:
        """Whether a public key is known, read in ``r`` (the caller's read transaction)."""
        operators, vouched = self._operators, self._vouched

        def known(public_key: bytes) -> bool:
            return (
                public_key in operators
                or public_key in vouched
                or st.active_accounts_of_key(r, public_key) > 0
            )

        return known

    def admitted(self, checked: CheckedTx) -> None:
        """The node took ``checked``: an account opening signed by its bank vouches for the key."""
        op = checked.body.op
        if not isinstance(op, OpenAccount):
            return
        member = self._genesis.member(op.member_id)
        if member is None or member.operator_key not in checked.signers:
            return
        self._vouched.pop(op.owner_key, None)
        self._vouched[op.owner_key] = None
        while len(self._vouched) > VOUCHED_KEYS_MAX:
            del self._vouched[next(iter(self._vouched))]
