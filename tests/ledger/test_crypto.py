from pathlib import Path

import pytest

from ledger import crypto


def test_sign_and_verify_round_trip() -> None:
    key = crypto.SigningKey.generate()
    sig = key.sign(crypto.DOMAIN_TX, "chain-1", b"body")
    assert crypto.verify(key.public_key, sig, crypto.DOMAIN_TX, "chain-1", b"body")


@pytest.mark.parametrize(
    ("domain", "chain", "body"),
    [
        (crypto.DOMAIN_CONSENSUS, "chain-1", b"body"),  # another domain
        (crypto.DOMAIN_TX, "chain-2", b"body"),  # another chain
        (crypto.DOMAIN_TX, "chain-1", b"bodY"),  # other bytes
    ],
)
def test_signature_is_bound_to_domain_chain_and_bytes(domain: bytes, chain: str, body: bytes) -> None:
    key = crypto.SigningKey.generate()
    sig = key.sign(crypto.DOMAIN_TX, "chain-1", b"body")
    assert not crypto.verify(key.public_key, sig, domain, chain, body)


@pytest.mark.parametrize(
    ("public_key", "signature"),
    [(b"", b""), (b"\x00" * 32, b"\x00" * 64), (b"\xff" * 32, b"\x01" * 64), (b"\x01" * 31, b"\x00" * 64)],
)
def test_verify_never_raises_on_garbage(public_key: bytes, signature: bytes) -> None:
    assert not crypto.verify(public_key, signature, crypto.DOMAIN_TX, "c", b"x")


def test_chain_id_length_prefix_prevents_ambiguity() -> None:
    # "ab" + body "c..." must not sign the same bytes as "a" + body "bc...".
    assert crypto.signing_bytes(crypto.DOMAIN_TX, "ab", b"c") != crypto.signing_bytes(
        crypto.DOMAIN_TX, "a", b"bc"
    )


def test_key_file_save_load_list(tmp_path: Path) -> None:
    key = crypto.SigningKey.generate()
    crypto.save_key(tmp_path / "alice.key", key, "alice")
    assert (tmp_path / "alice.key").stat().st_mode & 0o777 == 0o600
    loaded = crypto.load_key(tmp_path / "alice.key")
    assert loaded.public_key == key.public_key and loaded.label == "alice"
    with pytest.raises(crypto.KeyFileError, match="already exists"):
        crypto.save_key(tmp_path / "alice.key", crypto.SigningKey.generate(), "other")
    (tmp_path / "junk.key").write_text("{not json")
    assert [k.label for k in crypto.list_keys(tmp_path)] == ["alice"]


@pytest.mark.parametrize(
    "content",
    ["", "[]", '{"kind": "rsa"}', '{"kind": "ed25519", "seed": "zz", "public_key": ""}', "x" * 5000],
)
def test_load_key_rejects_malformed_files(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.key"
    path.write_text(content)
    with pytest.raises(crypto.KeyFileError):
        crypto.load_key(path)


def test_load_key_rejects_mismatched_public_key(tmp_path: Path) -> None:
    key = crypto.SigningKey.generate()
    other = crypto.SigningKey.generate()
    path = tmp_path / "k.key"
    path.write_text(
        f'{{"kind": "ed25519", "seed": "{key.seed.hex()}", "public_key": "{other.public_key.hex()}"}}'
    )
    with pytest.raises(crypto.KeyFileError, match="does not match"):
        crypto.load_key(path)
