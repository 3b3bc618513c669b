#!/usr/bin/env python3
"""A screenshot of the operators' console (README's docs/img/console.png), and the one way this
project starts headless Chromium (tests/client/test_console_browser.py uses ``browser`` too).

    python scripts/console_screenshot.py [--out docs/img/console.png]

It starts a 4-bank consortium in a temporary directory, opens accounts, mints and moves some
money, starts ``ledgerctl console`` on a free loopback port, and has Chromium save the page once
its tables are filled; then it stops the console and every node by pid.

Chromium is Debian's (``apt-get install chromium``: /usr/bin/chromium), driven by Playwright
for Python; never ``playwright install`` (no browser downloads here). It runs without a sandbox
(we run as root) and with everything that phones home turned off: on a closed network Chromium
otherwise retries refused connections, many at a time.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from playwright.sync_api import Browser, sync_playwright  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
CONSOLE_START_S = 20.0


@contextmanager
def browser() -> Iterator[Browser]:
    """Debian's headless Chromium under Playwright, closed on exit."""
    if not CHROMIUM.exists():
        raise FileNotFoundError(f"{CHROMIUM} is missing: apt-get install chromium")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS), headless=True)
        try:
            yield b
        finally:
            b.close()


@contextmanager
def console_process(
    directory: Path, *extra: str, global_args: Sequence[str] = ()
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``ledgerctl --dir DIR GLOBAL_ARGS... console --listen 127.0.0.1:0 EXTRA...``: (its URL,
    the process), stopped by pid on exit (SIGTERM, then SIGKILL)."""
    argv = [sys.executable, "-m", "client.cli", "--dir", str(directory), *global_args, "console"]
    proc = subprocess.Popen(
        [*argv, "--listen", "127.0.0.1:0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the console's first line names its URL (or the error)
        found = re.search(r"http://\S+/", line)
        if found is None:
            rest = proc.stdout.read() if proc.poll() is not None else ""
            raise RuntimeError(f"the console did not start: {line}{rest}")
        yield found.group(0), proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


def populate(directory: Path) -> None:
    """Accounts at two banks, mints, transfers and a redeem, through the SDK."""
    from client.sdk import LedgerClient
    from client.tx import LegSpec
    from ledger.crypto import SigningKey, load_key

    def op(bank: str) -> SigningKey:
        return load_key(directory / "banks" / bank / f"{bank}.operator.key").key

    keys = {name: SigningKey.generate() for name in ("acme-treasury", "globex-ops", "initech-fx")}
    banks = {"acme-treasury": "BANK-A", "globex-ops": "BANK-A", "initech-fx": "BANK-B"}
    with LedgerClient(directory / "genesis.json", timeout_s=20) as c:
        txs = [c.tx.open_account(banks[a], a, k.public_key).signed_by(op(banks[a])) for a, k in keys.items()]
        txs += [
            c.tx.mint("USD.BANK-A", "acme-treasury", 2_500_000_00, "dep-20261202-001").signed_by(
                op("BANK-A")
            ),
            c.tx.mint("EUR.BANK-B", "initech-fx", 900_000_00, "dep-20261202-002").signed_by(op("BANK-B")),
        ]
        for tx in txs:
            c.submit(tx)
        moves = [
            c.tx.transfer(
                [LegSpec("acme-treasury", "globex-ops", "USD.BANK-A", 125_000_00)], memo="inv 4471"
            ),
            c.tx.pvp(
                LegSpec("acme-treasury", "initech-fx", "USD.BANK-A", 110_000_00),
                LegSpec("initech-fx", "acme-treasury", "EUR.BANK-B", 100_000_00),
                memo="fx 2026-12-02",
            ),
            c.tx.redeem("globex-ops", "USD.BANK-A", 20_000_00, "pay-20261202-9"),
        ]
        signers = [("acme-treasury",), ("acme-treasury", "initech-fx"), ("globex-ops",)]
        for tx, who in zip(moves, signers, strict=True):
            c.submit(tx.signed_by(*(keys[w] for w in who)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "console.png")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "scripts"))
    from consortium import Consortium

    with tempfile.TemporaryDirectory(prefix="console-shot-") as tmp:
        c = Consortium(Path(tmp) / "consortium")
        try:
            c.up(4)
            populate(c.dir)
            with console_process(c.dir, "--as", "BANK-A") as (url, _), browser() as b:
                page = b.new_page(viewport={"width": 1280, "height": 900})
                page.goto(url)
                page.wait_for_selector("#nodes tbody tr >> nth=3")
                page.wait_for_selector("#supply tbody tr")
                page.fill("#account-id", "acme-treasury")
                page.click("#lookup button")
                page.wait_for_selector("#balances tbody tr")
                time.sleep(0.3)  # let the last repaint land: a picture, not a test
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=True)
        finally:
            c.down()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
