from __future__ import annotations

import pytest

from ledger import wirescan
from ledger.v1 import consensus_pb2 as cpb


def test_repeated_entries_come_back_exactly_as_protobuf_encodes_them() -> None:
    entries = [b"", b"a", bytes(range(256)) * 3, b"\x00" * 200]
    raw = cpb.PeerFrame(messages=entries).SerializeToString()
    assert wirescan.repeated_bytes(raw, 1, 10) == entries


def test_too_many_entries_are_refused_after_counting_only_the_bound() -> None:
    raw = cpb.Batch(envelopes=[b"x"] * 1000).SerializeToString()
    assert len(wirescan.repeated_bytes(raw, 1, 1000)) == 1000
    with pytest.raises(wirescan.ScanError, match="more than 999"):
        wirescan.repeated_bytes(raw, 1, 999)


def test_singular_fields_are_exact_slices_and_other_wire_types_are_skipped() -> None:
    signed = cpb.SignedMessage(body=b"body", signer=3, signature=b"s" * 64)
    pm = cpb.PeerMessage(message=signed, batch=cpb.Batch(envelopes=[b"e1", b"e2"]))
    fields = wirescan.singular_fields(pm.SerializeToString())
    assert fields[1] == signed.SerializeToString()
    assert cpb.Batch.FromString(fields[2]).envelopes == [b"e1", b"e2"]
    assert wirescan.singular_fields(signed.SerializeToString()) == {1: b"body", 3: b"s" * 64}


@pytest.mark.parametrize(
    "garbage",
    [b"\x0a\x05abc", b"\x0a", b"\xff" * 11, b"\x00\x01", b"\x0b", b"\x09abc"],
)
def test_malformed_input_is_a_scan_error(garbage: bytes) -> None:
    with pytest.raises(wirescan.ScanError):
        wirescan.length_fields(garbage, 10)


def test_an_unexpected_field_in_a_repeated_message_is_refused() -> None:
    raw = cpb.PeerMessage(message=cpb.SignedMessage(body=b"b")).SerializeToString()
    with pytest.raises(wirescan.ScanError, match="unexpected field 1"):
        wirescan.repeated_bytes(raw, 2, 10)
