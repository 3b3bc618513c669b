"""Exact conversion between decimal text ("125.50") and integer minor units (12550).

Parsed by hand with one strict pattern, never through float, and never through int() on the
raw text (int() accepts underscores, signs, surrounding whitespace and non-ASCII digits):
every accepted input has exactly one meaning and everything else is an AmountError.
"""

from __future__ import annotations

import re

from ledger.genesis import Asset, Genesis

# Plain ASCII digits, an optional fraction with at least one digit; no sign, exponent,
# separators, leading zeros (other than a lone "0"), or whitespace.
_AMOUNT_RE = re.compile(r"(0|[1-9][0-9]*)(?:\.([0-9]+))?", re.ASCII)
AMOUNT_TEXT_CHARS_MAX = 64  # bounds the work before any integer is built


class AmountError(ValueError):
    """A decimal amount or "AMOUNT ASSET" text is not acceptable; the message says why."""


def parse_amount(text: str, scale: int, amount_max: int, *, allow_zero: bool = False) -> int:
    """Parse decimal text into minor units of an asset with ``scale`` decimal places.

    "125.5" and "125.50" with scale 2 are 12550; "0.001" with scale 2 is an error (too many
    decimals, never rounded); the result is in 1..amount_max (0 too with allow_zero).
    """
    if not 0 <= scale <= 18:
        raise AmountError(f"scale {scale} is outside 0..18")
    if len(text) > AMOUNT_TEXT_CHARS_MAX:
        raise AmountError(f"amount text longer than {AMOUNT_TEXT_CHARS_MAX} characters")
    if text != text.strip() or not text:
        raise AmountError(f"{text!r}: an amount is plain digits with no surrounding spaces")
    if text.startswith("-"):
        raise AmountError(f"{text!r}: amounts cannot be negative")
    match = _AMOUNT_RE.fullmatch(text)
    if match is None:
        raise AmountError(f"{text!r}: not a decimal amount (write digits like 125.50; no sign or exponent)")
    whole, fraction = match.group(1), match.group(2) or ""
    if len(fraction) > scale:
        if scale == 0:
            raise AmountError(f"{text!r}: this asset has no decimal places")
        raise AmountError(f"{text!r}: more than {scale} decimal places for this asset")
    minor: int = int(whole) * 10**scale + int(fraction.ljust(scale, "0") or "0")
    if minor == 0 and not allow_zero:
        raise AmountError(f"{text!r}: amount must be greater than zero")
    if minor > amount_max:
        raise AmountError(f"{text!r}: above the ledger maximum of {format_amount(amount_max, scale)}")
    return minor


def format_amount(minor: int, scale: int) -> str:
    """Minor units as decimal text with exactly ``scale`` places: (12550, 2) -> "125.50"."""
    if not 0 <= scale <= 18:
        raise AmountError(f"scale {scale} is outside 0..18")
    sign = "-" if minor < 0 else ""
    whole, fraction = divmod(abs(minor), 10**scale)
    if scale == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{fraction:0{scale}d}"


def find_asset(genesis: Genesis, name: str) -> Asset:
    """The genesis asset called ``name``, or an AmountError listing the known ones."""
    asset = genesis.asset(name)
    if asset is None:
        known = ", ".join(a.asset for a in genesis.assets) or "none"
        raise AmountError(f"unknown asset {name!r} (known: {known})")
    return asset


def parse_money(text: str, genesis: Genesis, *, allow_zero: bool = False) -> tuple[Asset, int]:
    """Parse "125.50 USD.BANK-A" (one space between) into (asset, minor units)."""
    parts = text.split(" ")
    if len(parts) != 2:
        raise AmountError(
            f"{text!r}: write an amount and an asset separated by one space, e.g. '125.50 USD.BANK-A'"
        )
    asset = find_asset(genesis, parts[1])
    return asset, parse_amount(parts[0], asset.scale, genesis.limits.amount_max, allow_zero=allow_zero)


def format_money(minor: int, asset: Asset) -> str:
    """(12550, USD.BANK-A scale 2) -> "125.50 USD.BANK-A"."""
    return f"{format_amount(minor, asset.scale)} {asset.asset}"
