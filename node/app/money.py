"""All money arithmetic of the ledger: integers in minor units, bounded by amount_max.

Balances, held amounts and supplies are never negative and never above amount_max (which
genesis bounds by int64, so every value also fits the wire's int64 fields).
"""

from __future__ import annotations


def _assert_amount(value: int) -> None:
    # Our own values only reach here; a float or a negative would be a bug of ours.
    assert type(value) is int and value >= 0, f"money value {value!r} is not a non-negative int"


def credit(balance: int, amount: int, amount_max: int) -> int | None:
    """balance + amount, or None when the result would pass amount_max."""
    _assert_amount(balance)
    _assert_amount(amount)
    total = balance + amount
    return None if total > amount_max else total


def debit(balance: int, amount: int) -> int | None:
    """balance - amount, or None when the balance is insufficient."""
    _assert_amount(balance)
    _assert_amount(amount)
    return None if amount > balance else balance - amount
