"""Receipts are assembled as serialized bytes from per-block and per-transaction parts
(node/receipts.py); these tests hold that assembly to protobuf's own encoding and parsing."""

from __future__ import annotations

import pytest

from ledger.v1 import api_pb2, consensus_pb2, tx_pb2
from node.receipts import _BlockView, field_bytes, receipt_batches


@pytest.mark.parametrize("size", [0, 1, 127, 128, 300, 16_383, 16_384, 2_097_152])
def test_afield_bytes_is_encoded_as_protobuf_encodes_it(size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    # Repeated fields, so that protobuf encodes even an empty value.
    assert field_bytes(5, data) == api_pb2.Receipt(tx_proof=[data]).SerializeToString()
    assert field_bytes(1, data) == api_pb2.WaitReceiptsRequest(tx_ids=[data]).SerializeToString()


def _view() -> tuple[_BlockView, list[bytes], consensus_pb2.CommitCertificate]:
    results = [
        tx_pb2.TxResult(
            tx_id=bytes([i]) * 32, code=tx_pb2.OK, height=7, index=i, final=True
        ).SerializeToString()
        for i in range(3)
    ]
    certificate = consensus_pb2.CommitCertificate()
    certificate.commits.add(body=b"commit-body", signer=2, signature=b"s" * 64)
    header = b"header-bytes" * 20
    tx_paths = [[bytes([i, j]) * 16 for j in range(2)] for i in range(3)]
    result_paths = [[bytes([j, i]) * 16 for j in range(2)] for i in range(3)]
    view = _BlockView(
        tx_ids=[bytes([i]) * 32 for i in range(3)],
        results=tuple(results),
        tx_paths=tx_paths,
        result_paths=result_paths,
        shared=field_bytes(3, header) + field_bytes(4, certificate.SerializeToString()),
    )
    return view, results, certificate


def test_an_assembled_receipt_parses_to_the_receipt_built_with_protobuf() -> None:
    view, results, certificate = _view()
    attestations = [
        consensus_pb2.SignedMessage(body=b"att-%d" % i, signer=i, signature=b"a" * 64) for i in range(3)
    ]
    encoded = b"".join(field_bytes(7, a.SerializeToString()) for a in attestations)
    for index in range(3):
        expected = api_pb2.Receipt(
            result=tx_pb2.TxResult.FromString(results[index]),
            result_bytes=results[index],
            header=b"header-bytes" * 20,
            certificate=certificate,
            tx_proof=view.tx_paths[index],
            result_proof=view.result_paths[index],
            attestations=attestations,
        )
        assert api_pb2.Receipt.FromString(view.receipt(index, encoded)) == expected


def test_receipt_batches_keep_order_and_split_under_the_byte_limit() -> None:
    receipts = [api_pb2.Receipt(header=bytes([i]) * 1000).SerializeToString() for i in range(10)]
    messages = receipt_batches(receipts, bytes_max=3_500)
    assert all(len(m) <= 3_500 for m in messages)
    assert len(messages) == 4  # three receipts (1,006 bytes each) per message
    parsed = [r for m in messages for r in api_pb2.ReceiptBatch.FromString(m).receipts]
    assert [r.SerializeToString() for r in parsed] == receipts


def test_a_receipt_over_the_limit_goes_alone_and_an_empty_batch_is_one_empty_message() -> None:
    big = api_pb2.Receipt(header=b"x" * 5_000).SerializeToString()
    small = api_pb2.Receipt(header=b"y").SerializeToString()
    messages = receipt_batches([small, big, small], bytes_max=1_000)
    assert [len(api_pb2.ReceiptBatch.FromString(m).receipts) for m in messages] == [1, 1, 1]
    assert receipt_batches([], bytes_max=1_000) == [b""]
