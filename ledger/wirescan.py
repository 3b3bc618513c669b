"""Protobuf wire format, read without building messages: the length-delimited fields of a
message as exact byte slices, with a bound on how many are taken.

Parsing a peer's message with the generated classes builds every repeated entry before we can
count them: 8 MB of two-byte entries became ~200 MB of Python objects before any signature was
checked. Scanning first lets the caller refuse a message with too many entries after touching
only what it counted, and take the exact bytes of a part (a signed message, a batch) without
re-serializing it.
"""

from __future__ import annotations

from typing import TypeVar

# bytes, or a memoryview of them: fields come back as slices of the same kind (a memoryview's
# slices are not copies).
B = TypeVar("B", bytes, memoryview)

_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5

# A message this small may be parsed by protobuf (in C, several times faster than this scan)
# without counting first: however it is packed, it holds at most 32,768 entries, about 1 MB of
# parsed objects. Votes, and frames of votes, are all far below it; larger input is scanned.
PARSE_DIRECT_BYTES_MAX = 64 << 10


class ScanError(ValueError):
    """Not a well-formed protobuf message, or more entries than the caller allows."""


class TooManyError(ScanError):
    """Well-formed as far as it was read, but with more entries than the caller allows."""


def _varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise ScanError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise ScanError("varint longer than 10 bytes")


def length_fields(data: B, count_max: int, wanted: frozenset[int] | None = None) -> list[tuple[int, B]]:
    """(field number, bytes) of each length-delimited field of ``data`` (of those ``wanted``
    only: the others are skipped without a copy), in wire order; other wire types are skipped.
    ScanError on malformed input or past ``count_max`` fields of any kind (so the work is
    bounded by the caller, not the sender)."""
    out: list[tuple[int, B]] = []
    pos, end, seen = 0, len(data), 0
    while pos < end:
        seen += 1
        if seen > count_max:
            raise TooManyError(f"more than {count_max} fields")
        tag, pos = _varint(data, pos)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise ScanError("field number 0")
        if wire == _WIRE_LEN:
            size, pos = _varint(data, pos)
            if pos + size > end:
                raise ScanError("length past the end")
            if wanted is None or field in wanted:
                out.append((field, data[pos : pos + size]))
            pos += size
        elif wire == _WIRE_VARINT:
            _, pos = _varint(data, pos)
        elif wire == _WIRE_I64:
            pos += 8
        elif wire == _WIRE_I32:
            pos += 4
        else:
            raise ScanError(f"unsupported wire type {wire}")
        if pos > end:
            raise ScanError("value past the end")
    return out


def repeated_bytes(data: B, field: int, count_max: int) -> list[B]:
    """The entries of a message made of one repeated bytes (or message) field, exactly as sent.
    ScanError when malformed, when another field is present, or past ``count_max`` entries."""
    entries: list[B] = []
    for number, value in length_fields(data, count_max):
        if number != field:
            raise ScanError(f"unexpected field {number}")
        entries.append(value)
    return entries


def singular_fields(data: B, fields_max: int = 16, wanted: frozenset[int] | None = None) -> dict[int, B]:
    """The length-delimited fields (``wanted`` ones only) of a small message by number (the last
    one wins, as in protobuf); ScanError when malformed or with more than ``fields_max`` fields."""
    return dict(length_fields(data, fields_max, wanted))
