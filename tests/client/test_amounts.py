import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.amounts import AmountError, format_amount, format_money, parse_amount, parse_money
from tests.client.fakes import FakeChain

MAX = 10**15


@pytest.mark.parametrize(
    ("text", "scale", "minor"),
    [
        ("125.50", 2, 12550),
        ("125.5", 2, 12550),
        ("125", 2, 12500),
        ("0.01", 2, 1),
        ("0.1", 2, 10),
        ("0.2", 2, 20),
        ("0.3", 2, 30),
        ("1000", 0, 1000),
        ("0.000000000000000001", 18, 1),
        ("10000000000000.00", 2, MAX),
    ],
)
def test_parses_exactly(text: str, scale: int, minor: int) -> None:
    assert parse_amount(text, scale, MAX) == minor


def test_point_one_plus_point_two_is_point_three_exactly() -> None:
    # The float classic: 0.1 + 0.2 != 0.3. In minor units it is exact, at every scale.
    for scale in (1, 2, 8, 18):
        a, b, c = (parse_amount(t, scale, 10**18) for t in ("0.1", "0.2", "0.3"))
        assert a + b == c
        assert format_amount(a + b, scale) == "0.3".ljust(scale + 2, "0")
    assert parse_amount("1.10", 2, MAX) + parse_amount("2.20", 2, MAX) == parse_amount("3.30", 2, MAX)
    # 0.1 * 3 as a float is 0.30000000000000004: we never go through float.
    assert parse_amount("0.30000000000000004", 18, 10**18) == 300000000000000040


@pytest.mark.parametrize(
    ("text", "scale", "why"),
    [
        ("1.234", 2, "more than 2 decimal places"),
        ("1.5", 0, "no decimal places"),
        ("125.500", 2, "more than 2"),
        ("-1.00", 2, "negative"),
        ("+1.00", 2, "not a decimal"),
        ("0", 2, "greater than zero"),
        ("0.00", 2, "greater than zero"),
        ("10000000000000.01", 2, "above the ledger maximum"),
        ("9" * 40, 2, "above the ledger maximum"),
        ("9" * 70, 2, "longer than"),
        ("abc", 2, "not a decimal"),
        ("1e3", 2, "not a decimal"),
        ("1E3", 2, "not a decimal"),
        ("NaN", 2, "not a decimal"),
        ("inf", 2, "not a decimal"),
        ("1,000.00", 2, "not a decimal"),
        ("1_000", 2, "not a decimal"),
        (" 1.00", 2, "surrounding spaces"),
        ("1.00 ", 2, "surrounding spaces"),
        ("1. 00", 2, "not a decimal"),
        ("\u0661\u0662", 2, "not a decimal"),  # Arabic-Indic digits: int() would accept them
        ("１２", 2, "not a decimal"),  # fullwidth digits
        (".5", 2, "not a decimal"),
        ("5.", 2, "not a decimal"),
        ("01.00", 2, "not a decimal"),
        ("", 2, "surrounding spaces"),
        ("0x10", 2, "not a decimal"),
    ],
)
def test_rejects(text: str, scale: int, why: str) -> None:
    with pytest.raises(AmountError, match=why):
        parse_amount(text, scale, MAX)


def test_zero_allowed_only_when_asked() -> None:
    assert parse_amount("0.00", 2, MAX, allow_zero=True) == 0


@pytest.mark.parametrize(
    ("minor", "scale", "text"),
    [(12550, 2, "125.50"), (1, 2, "0.01"), (0, 2, "0.00"), (5, 0, "5"), (-1, 2, "-0.01"), (10, 3, "0.010")],
)
def test_formats(minor: int, scale: int, text: str) -> None:
    assert format_amount(minor, scale) == text


@given(st.integers(min_value=1, max_value=MAX), st.integers(min_value=0, max_value=18))
def test_format_then_parse_round_trips(minor: int, scale: int) -> None:
    assert parse_amount(format_amount(minor, scale), scale, MAX) == minor


def test_money_with_asset_from_genesis() -> None:
    genesis = FakeChain(ledger=False).genesis
    asset, minor = parse_money("125.50 USD.BANK-A", genesis)
    assert (asset.asset, minor) == ("USD.BANK-A", 12550)
    assert format_money(minor, asset) == "125.50 USD.BANK-A"
    asset, minor = parse_money("7 JPY.BANK-D", genesis)
    assert (asset.scale, minor) == (0, 7)
    with pytest.raises(AmountError, match=r"unknown asset 'USD\.BANK-Z'"):
        parse_money("1.00 USD.BANK-Z", genesis)
    with pytest.raises(AmountError, match="separated by one space"):
        parse_money("1.00  USD.BANK-A", genesis)
    with pytest.raises(AmountError, match="no decimal places"):
        parse_money("7.5 JPY.BANK-D", genesis)
