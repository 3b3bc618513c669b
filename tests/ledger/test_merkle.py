import hashlib

from hypothesis import given
from hypothesis import strategies as st

from ledger import merkle


@given(st.lists(st.binary(max_size=16), min_size=1, max_size=70), st.data())
def test_every_proof_verifies_and_only_for_its_leaf(leaves: list[bytes], data: st.DataObject) -> None:
    root, proofs = merkle.all_proofs(leaves)
    assert root == merkle.root(leaves)
    i = data.draw(st.integers(0, len(leaves) - 1))
    assert merkle.verify(root, leaves[i], i, len(leaves), proofs[i])
    assert proofs[i] == merkle.proof(leaves, i)
    assert not merkle.verify(root, leaves[i] + b"!", i, len(leaves), proofs[i])
    # A count that changes the tree's shape cannot verify (the count itself is in the signed header).
    assert not merkle.verify(root, leaves[i], i, 2 * len(leaves) + 1, proofs[i])
    if len(leaves) > 1:
        j = (i + 1) % len(leaves)
        if leaves[j] != leaves[i]:
            assert not merkle.verify(root, leaves[i], j, len(leaves), proofs[i])


def _rfc6962_root(hashes: list[bytes]) -> bytes:
    """MTH of RFC 6962 section 2.1, written as the RFC defines it (split at the largest power
    of two below n), for leaves already hashed."""
    if len(hashes) == 1:
        return hashes[0]
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    return merkle.node_hash(_rfc6962_root(hashes[:k]), _rfc6962_root(hashes[k:]))


def test_roots_match_the_rfc_6962_definition() -> None:
    for n in range(1, 80):
        leaves = [i.to_bytes(2, "big") for i in range(n)]
        assert merkle.root(leaves) == _rfc6962_root([merkle.leaf_hash(x) for x in leaves]), n


def test_known_shapes() -> None:
    a, b, c = b"a", b"b", b"c"
    ab = merkle.node_hash(merkle.leaf_hash(a), merkle.leaf_hash(b))
    assert merkle.root([a]) == merkle.leaf_hash(a)
    assert merkle.root([a, b]) == ab
    assert merkle.root([a, b, c]) == merkle.node_hash(ab, merkle.leaf_hash(c))
    assert merkle.root([]) == hashlib.sha256(b"").digest()


def test_verify_rejects_bad_inputs() -> None:
    root = merkle.root([b"x", b"y"])
    assert not merkle.verify(root, b"x", -1, 2, [merkle.leaf_hash(b"y")])
    assert not merkle.verify(root, b"x", 0, 2, [b"short"])
    assert not merkle.verify(root, b"x", 0, 2, [merkle.leaf_hash(b"y")] * 65)
