import json
from pathlib import Path
from typing import Any

import pytest

from ledger.crypto import SigningKey
from ledger.genesis import GenesisError, LedgerLimits, load_genesis, parse_genesis


def make_doc(banks: int = 4) -> dict[str, Any]:
    members = []
    for i in range(banks):
        mid = f"BANK-{chr(65 + i)}"
        members.append(
            {
                "member_id": mid,
                "replica": i,
                "node_key": SigningKey.generate().public_key.hex(),
                "operator_key": SigningKey.generate().public_key.hex(),
                "host": "127.0.0.1",
                "replica_port": 7000 + i,
                "api_port": 7100 + i,
                "assets": [{"asset": f"USD.{mid}", "scale": 2}],
            }
        )
    return {"chain_id": "test-chain", "f": (banks - 1) // 3, "members": members}


def test_round_trip_through_json(tmp_path: Path) -> None:
    genesis = parse_genesis(make_doc())
    path = tmp_path / "genesis.json"
    path.write_text(genesis.to_json())
    again = load_genesis(path)
    assert again == genesis
    assert again.n == 4 and again.quorum == 3
    assert again.asset("USD.BANK-B") is not None and again.asset("USD.BANK-B").issuer == "BANK-B"  # type: ignore[union-attr]
    assert again.limits == LedgerLimits()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(f=2), "3f\\+1"),
        (lambda d: d["members"][1].update(replica=0), "replica indexes"),
        (lambda d: d["members"][1].update(member_id="bank b"), "member_id"),
        (lambda d: d["members"][1].update(node_key="00"), "32 bytes"),
        (lambda d: d["members"][1].update(node_key="zz"), "not hex"),
        (lambda d: d["members"][1]["assets"][0].update(asset="USD.BANK-A"), "must be CCY.BANK-B"),
        (lambda d: d["members"][1]["assets"][0].update(scale=19), "scale"),
        (lambda d: d["members"][1].update(api_port=0), "api_port"),
        (lambda d: d["members"][1].update(api_port="80"), "integer"),
        (lambda d: d.update(limits={"legs_max": 0}), "legs_max"),
        (lambda d: d.update(limits={"nope": 1}), "unknown"),
        (lambda d: d.update(chain_id=""), "chain_id"),
        (lambda d: d.pop("members"), "members"),
    ],
)
def test_rejects_bad_genesis_with_the_field_named(mutate: Any, message: str) -> None:
    doc = make_doc()
    mutate(doc)
    with pytest.raises(GenesisError, match=message):
        parse_genesis(doc)


def test_duplicate_node_keys_rejected() -> None:
    doc = make_doc()
    doc["members"][1]["node_key"] = doc["members"][0]["node_key"]
    with pytest.raises(GenesisError, match="duplicate node_key"):
        parse_genesis(doc)


def test_load_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(GenesisError, match="cannot read"):
        load_genesis(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(GenesisError, match="not JSON"):
        load_genesis(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text(json.dumps([1]))
    with pytest.raises(GenesisError, match="JSON object"):
        load_genesis(tmp_path / "list.json")


def test_ids_with_a_trailing_newline_are_rejected() -> None:
    """Regression: ^...$ with .match accepted "BANK-A\n" and "USD.BANK-A\n"."""
    doc = make_doc()
    doc["members"][0]["member_id"] = "BANK-A\n"
    doc["members"][0]["assets"] = []
    with pytest.raises(GenesisError, match="member_id"):
        parse_genesis(doc)
    doc = make_doc()
    doc["members"][0]["assets"] = [{"asset": "USD.BANK-A\n", "scale": 2}]
    with pytest.raises(GenesisError, match="asset"):
        parse_genesis(doc)
