"""ledgerctl console: a read-only web page for a bank's operators (issue 19 item 4).

    ledgerctl --dir consortium console [--as BANK-A] [--listen 127.0.0.1:8470]

A small HTTP server (the standard library's ThreadingHTTPServer) that reads the ledger through
the SDK with one bank's operator key, and serves one page whose script polls JSON:

    GET /                  the page (client/console_page.py: HTML, CSS, JS; no inline script)
    GET /api/overview      every node's status (view, height, state root, peers, up or down),
                           the recent verified blocks and their transactions, supply per asset
                           (?blocks=N, 1..50, default 10)
    GET /api/account?id=X  an account's balances under the operator's read authority: its own
                           bank's accounts only; another bank's gets the nodes' PERMISSION_DENIED

Who may read what is the nodes' decision (docs/ARCHITECTURE.md, "Who may read"): the console
holds no more authority than its operator key, and whoever reaches its port reads with it, so
it binds 127.0.0.1 by default and refuses requests whose Host header is not that address (a web
page elsewhere cannot rebind a name to it and read through the operator's browser). Read-only:
GET only, 405 for every other method. Query parameters are bounded (400 with the reason).

Nothing hangs on a node that is down or stalled: statuses are asked of every node at once, each
with its own short deadline (a node that does not answer in STATUS_TIMEOUT_S shows as down), and
every read has a deadline; the page's script gives each poll a deadline too. One overview is
built at a time and shared by the requests that arrive meanwhile (OVERVIEW_REUSE_S).
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qs, urlsplit

from google.protobuf.message import DecodeError

from client import cli_output as out
from client.amounts import format_amount
from client.console_page import CSS, HTML, JS
from client.models import LedgerError, NodeStatusInfo, NotAuthorized, NotFound, Unreachable, Unverified
from client.sdk import LedgerClient
from client.verify import ReceiptError, VerifiedBlock
from ledger.crypto import SigningKey
from ledger.genesis import Genesis
from ledger.v1 import tx_pb2

DEFAULT_LISTEN = "127.0.0.1:8470"
STATUS_TIMEOUT_S = 1.0  # a node that has not answered its status by then shows as down
READ_TIMEOUT_S = 3.0  # supply, blocks, an account: across the nodes, failing over
CALL_TIMEOUT_S = 1.0  # one read at one node
OVERVIEW_REUSE_S = 0.5  # requests within this of a finished overview get that one
BLOCKS_DEFAULT, BLOCKS_MAX = 10, 50
TRANSACTIONS_MAX = 50
TARGET_BYTES_MAX = 512  # path and query of a request
ACCOUNT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]*", re.ASCII)  # node/app/validate.py's ID_RE
LOOPBACK = ("127.0.0.1", "localhost")
# The page's own script and style, nothing else: no inline script, no frames, no forms posted.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


T = TypeVar("T")


class BadRequest(ValueError):
    """A request the console refuses (400, with this message)."""


class ConsoleError(ValueError):
    """Bad console arguments (ledgerctl exits 2)."""


class KeySource(Protocol):
    def key_by_public(self, public_key: bytes) -> SigningKey | None: ...


def operator_key(genesis: Genesis, keys: KeySource, bank: str | None) -> tuple[str, SigningKey]:
    """The operator key to read with: ``bank``'s, else the first member's that is at hand."""
    members = [m for m in genesis.members if bank is None or m.member_id == bank]
    if bank is not None and not members:
        known = ", ".join(m.member_id for m in genesis.members)
        raise ConsoleError(f"--as {bank!r}: no such bank (banks: {known})")
    for m in members:
        key = keys.key_by_public(m.operator_key)
        if key is not None:
            return m.member_id, key
    who = f"{bank}'s operator key" if bank else "no member's operator key"
    raise ConsoleError(
        f"{who} is not at hand (DIR/banks/BANK/, DIR/keys or --wallet): the console reads with it"
    )


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConsoleError(f"--listen {text!r}: give HOST:PORT, e.g. 127.0.0.1:8470 (port 0: any free one)")
    return host, int(port)


# --- what the page shows ---------------------------------------------------------------------


def node_doc(endpoint: str, member_id: str, s: NodeStatusInfo | str) -> dict[str, Any]:
    doc = out.status_doc(s, endpoint)
    doc["bank"] = member_id
    if isinstance(s, NodeStatusInfo):
        doc["peers"] = [{"bank": p.member_id, "up": p.up} for p in s.peers]
        doc["peers_up"] = sum(p.up for p in s.peers)
    return doc


def health_doc(genesis: Genesis, nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """The consortium's health from its nodes' statuses: how many are up against the 2f+1 a
    block needs, and whether the nodes at the top height agree on its state root."""
    up = [d for d in nodes if d["up"]]
    top = max((d["height"] for d in up), default=0)
    roots = {d["state_root"] for d in up if d["height"] == top}
    quorum = 2 * genesis.f + 1
    return {
        "n": genesis.n,
        "f": genesis.f,
        "quorum": quorum,
        "up": len(up),
        "height": top,
        "heights": sorted({d["height"] for d in up}),
        "roots_agree": len(roots) <= 1,
        "views": sorted({d["view"] for d in up}),
        "ok": len(up) >= quorum and len(roots) <= 1,
    }


def _money(genesis: Genesis, asset: str, minor: int) -> str:
    a = genesis.asset(asset)
    return f"{format_amount(minor, a.scale if a else 0)} {asset}"


def tx_summary(genesis: Genesis, raw: bytes) -> tuple[str, str]:
    """(kind, one line) of an envelope's body; ("unreadable", "") when it does not parse."""
    try:
        body = tx_pb2.TxBody.FromString(tx_pb2.Envelope.FromString(raw).body)
    except DecodeError:
        return "unreadable", ""
    kind = body.WhichOneof("op") or "none"
    if kind == "transfer":
        legs = body.transfer.legs
        line = "; ".join(
            f"{leg.from_account} → {leg.to_account} {_money(genesis, leg.asset, leg.amount)}" for leg in legs
        )
    elif kind == "mint":
        m = body.mint
        line = f"{_money(genesis, m.asset, m.amount)} to {m.account_id} (deposit {m.deposit_ref})"
    elif kind == "redeem":
        r = body.redeem
        line = f"{_money(genesis, r.asset, r.amount)} from {r.account_id} (payout {r.payout_ref})"
    elif kind == "open_account":
        line = f"{body.open_account.account_id} at {body.open_account.member_id}"
    elif kind == "set_frozen":
        line = f"{body.set_frozen.account_id} {'frozen' if body.set_frozen.frozen else 'unfrozen'}"
    elif kind == "escrow_create":
        e = body.escrow_create
        line = f"{e.escrow_id}: {e.from_account} → {e.to_account} {_money(genesis, e.asset, e.amount)}"
    elif kind == "escrow_post":
        line = f"{body.escrow_post.escrow_id}: post {body.escrow_post.amount}"
    elif kind == "escrow_void":
        line = f"{body.escrow_void.escrow_id}: void"
    else:
        line = ""
    return kind, line if not body.memo else f"{line} (memo: {body.memo})"


def blocks_doc(genesis: Genesis, blocks: Sequence[VerifiedBlock]) -> tuple[list[Any], list[Any]]:
    """(blocks newest first, their transactions newest first, at most TRANSACTIONS_MAX)."""
    docs, txs = [], []
    for b in reversed(blocks):
        doc = out.block_doc(b)
        txs_of_block = []
        for i, t in enumerate(doc.pop("transactions")):
            kind, line = tx_summary(genesis, b.envelopes[i]) if b.bodies else ("", "")
            txs_of_block.append({"height": doc["height"], "index": i, **t, "kind": kind, "summary": line})
        txs += reversed(txs_of_block)
        docs.append(doc)
    return docs, txs[:TRANSACTIONS_MAX]


def supply_doc(genesis: Genesis, client: LedgerClient, reader: SigningKey) -> dict[str, Any]:
    doc = out.supply_doc(client.supply(as_key=reader))
    for a in doc["assets"]:
        a["reserves"] = "n/a"  # no reserve figures on the ledger yet
    return doc


def _error(exc: Exception) -> str:
    """The most telling line of an SDK error: the last node's own answer when there is one."""
    errors = getattr(exc, "errors", ())
    return f"{exc}" if not errors else f"{str(exc).split(' (')[0]}: {errors[-1]}"


def _result(future: Future[T], timeout_s: float, late: T) -> T:
    """The future's result, or ``late`` past the deadline (the page never waits longer)."""
    try:
        return future.result(timeout=timeout_s)
    except TimeoutError:
        return late


class Console:
    """Reads for the page, each bounded; statuses of every node at once."""

    def __init__(
        self,
        genesis: Genesis,
        endpoints: Sequence[str] | None,
        reader: SigningKey,
        reader_bank: str,
        *,
        insecure: bool = False,
    ) -> None:
        self.genesis = genesis
        self.reader = reader
        self.reader_bank = reader_bank
        self.client = LedgerClient(
            genesis,
            endpoints,
            timeout_s=READ_TIMEOUT_S,
            call_timeout_s=CALL_TIMEOUT_S,
            reader=reader,
            insecure=insecure,
        )
        member_of = {m.api_address: m.member_id for m in genesis.members}
        self.nodes = [(ep, member_of.get(ep, "?")) for ep in self.client.endpoints]
        # One client per node for statuses, so they run side by side on their own channels.
        self._status_clients = {
            ep: LedgerClient(genesis, [ep], timeout_s=STATUS_TIMEOUT_S, insecure=insecure)
            for ep, _ in self.nodes
        }
        self._pool = ThreadPoolExecutor(max_workers=len(self.nodes) + 2, thread_name_prefix="console")
        self._read_lock = threading.Lock()  # the shared client's reads, one at a time
        self._overview_lock = threading.Lock()
        self._overview: tuple[float, int, dict[str, Any]] | None = None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
        for c in self._status_clients.values():
            c.close()

    def _status(self, endpoint: str) -> NodeStatusInfo | str:
        try:
            return self._status_clients[endpoint].status(endpoint, timeout_s=STATUS_TIMEOUT_S)
        except LedgerError as exc:
            return _error(exc)

    def nodes_doc(self) -> list[dict[str, Any]]:
        futures = [(ep, bank, self._pool.submit(self._status, ep)) for ep, bank in self.nodes]
        late = f"no answer within {STATUS_TIMEOUT_S:g}s"
        return [node_doc(ep, bank, _result(f, STATUS_TIMEOUT_S + 1.0, late)) for ep, bank, f in futures]

    def _read(self, what: str, read: Callable[[], Any]) -> tuple[Any, str | None]:
        with self._read_lock:
            try:
                return read(), None
            except (LedgerError, ReceiptError) as exc:
                return None, f"{what}: {_error(exc)}"

    def overview(self, block_count: int) -> dict[str, Any]:
        with self._overview_lock:  # one at a time; who waited for it takes the fresh one
            if self._overview is not None:
                built, count, doc = self._overview
                if count == block_count and time.monotonic() - built < OVERVIEW_REUSE_S:
                    return doc
            doc = self._build_overview(block_count)
            self._overview = (time.monotonic(), block_count, doc)
            return doc

    def _build_overview(self, block_count: int) -> dict[str, Any]:
        supply = self._pool.submit(
            self._read, "supply", lambda: supply_doc(self.genesis, self.client, self.reader)
        )
        nodes = self.nodes_doc()
        health = health_doc(self.genesis, nodes)
        errors: list[str] = []
        blocks: list[Any] = []
        txs: list[Any] = []
        top = health["height"]
        if top:
            got, err = self._read(
                "blocks", lambda: self.client.blocks(max(1, top - block_count + 1), block_count).blocks
            )
            if got is not None:
                blocks, txs = blocks_doc(self.genesis, got)
            if err:
                errors.append(err)
        supply_value, err = _result(supply, READ_TIMEOUT_S + 2.0, (None, "supply: no answer in time"))
        if err:
            errors.append(err)
        return {
            "chain_id": self.genesis.chain_id,
            "reader": self.reader_bank,
            "time_ms": int(time.time() * 1000),
            "health": health,
            "nodes": nodes,
            "blocks": blocks,
            "transactions": txs,
            "supply": supply_value,
            "errors": errors,
        }

    def account(self, account_id: str) -> tuple[int, dict[str, Any]]:
        """(HTTP status, document) of an account read with the operator's key."""
        try:
            with self._read_lock:
                acc = self.client.account(account_id, as_key=self.reader)
        except NotAuthorized as exc:
            return 403, {"error": _error(exc), "code": "PERMISSION_DENIED"}
        except NotFound as exc:
            return 404, {"error": _error(exc), "code": "NOT_FOUND"}
        except (Unreachable, Unverified, LedgerError) as exc:
            return 503, {"error": _error(exc), "code": "UNAVAILABLE"}
        return 200, out.account_doc(acc, self.genesis)


# --- HTTP ------------------------------------------------------------------------------------


def _one(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    if values is None:
        return None
    if len(values) != 1:
        raise BadRequest(f"give {name} once")
    return values[0]


def parse_query(query: str, allowed: Sequence[str]) -> dict[str, list[str]]:
    try:
        params = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query), max_num_fields=8)
    except ValueError as exc:
        raise BadRequest(f"malformed query string ({exc})") from exc
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise BadRequest(
            f"unknown parameter {unknown[0]!r} (this path takes: {', '.join(allowed) or 'none'})"
        )
    return params


def block_count(params: dict[str, list[str]]) -> int:
    text = _one(params, "blocks")
    if text is None:
        return BLOCKS_DEFAULT
    if not (text.isdigit() and len(text) <= 3 and 1 <= int(text) <= BLOCKS_MAX):
        raise BadRequest(f"blocks must be a whole number from 1 to {BLOCKS_MAX}")
    return int(text)


def account_id(params: dict[str, list[str]], id_bytes_max: int) -> str:
    text = _one(params, "id")
    if not text:
        raise BadRequest("give the account: /api/account?id=ACCOUNT")
    if len(text.encode()) > id_bytes_max or not ACCOUNT_ID_RE.fullmatch(text):
        raise BadRequest(
            f"an account id is 1..{id_bytes_max} of A-Z a-z 0-9 . _ : @ - (starting with a letter or digit)"
        )
    return text


class ConsoleServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, listen: tuple[str, int], console: Console) -> None:
        super().__init__(listen, Handler)
        self.console = console
        host, port = str(self.server_address[0]), int(self.server_address[1])
        self.url = f"http://{host}:{port}/"
        # Behind loopback, only requests addressed to loopback (DNS rebinding guard).
        self.hosts: frozenset[str] | None = (
            frozenset(f"{h}:{port}" for h in LOOPBACK) if listen[0] in LOOPBACK else None
        )


class Handler(BaseHTTPRequestHandler):
    server: ConsoleServer
    server_version = "ledger-console"
    protocol_version = "HTTP/1.1"

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the page polls every two seconds

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", CSP)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer has headers only
            self.wfile.write(body)

    def _json(self, status: int, doc: Any, extra: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(doc).encode(), "application/json", extra)

    def _refuse(self) -> None:
        self._json(405, {"error": f"{self.command}: the console is read-only (GET only)"}, {"Allow": "GET"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_TRACE = do_CONNECT = _refuse

    def do_GET(self) -> None:
        try:
            self._get()
        except BadRequest as exc:
            self._json(400, {"error": str(exc)})

    def _get(self) -> None:
        if self.server.hosts is not None and self.headers.get("Host", "") not in self.server.hosts:
            self._json(403, {"error": "unexpected Host header: open the console by its loopback address"})
            return
        if len(self.path) > TARGET_BYTES_MAX:
            raise BadRequest(f"request target over {TARGET_BYTES_MAX} bytes")
        target = urlsplit(self.path)
        console = self.server.console
        if target.path in ("/", "/index.html"):
            parse_query(target.query, ())
            self._send(200, HTML.encode(), "text/html; charset=utf-8")
        elif target.path == "/console.js":
            self._send(200, JS.encode(), "text/javascript; charset=utf-8")
        elif target.path == "/console.css":
            self._send(200, CSS.encode(), "text/css; charset=utf-8")
        elif target.path == "/api/overview":
            count = block_count(parse_query(target.query, ("blocks",)))
            self._json(200, console.overview(count))
        elif target.path == "/api/account":
            account = account_id(parse_query(target.query, ("id",)), console.genesis.limits.id_bytes_max)
            self._json(*console.account(account))
        else:
            self._json(404, {"error": f"no such page {target.path!r}"})


# --- ledgerctl console -----------------------------------------------------------------------


def add_command(sub: Any) -> None:
    c = sub.add_parser(
        "console",
        help="serve a read-only web page for operators (health, blocks, supply, accounts)",
        description="Serve the operators' console: every node's health, recent verified blocks and "
        "transactions, supply per asset, and account lookup under one bank's operator key (its "
        "own accounts only). Read-only; binds 127.0.0.1 by default; stop it with Ctrl-C.",
    )
    c.add_argument(
        "--as",
        dest="as_bank",
        metavar="BANK",
        help="read as this bank's operator (default: the first at hand)",
    )
    c.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"default {DEFAULT_LISTEN} (port 0: any)",
    )


class Ctx(KeySource, Protocol):
    genesis: Genesis
    endpoints: list[str] | None
    insecure: bool


def serve(console: Console, listen: tuple[str, int], announce: Callable[[str], None]) -> None:
    server = ConsoleServer(listen, console)
    try:
        announce(server.url)
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        console.close()


def cmd_console(ctx: Ctx, args: argparse.Namespace) -> int:
    listen = parse_listen(args.listen)
    bank, key = operator_key(ctx.genesis, ctx, args.as_bank)
    console = Console(ctx.genesis, ctx.endpoints, key, bank, insecure=ctx.insecure)

    def announce(url: str) -> None:
        where = (
            "" if listen[0] in LOOPBACK else " (not loopback: anyone who reaches it reads as the operator)"
        )
        print(f"console on {url} reading as {bank}'s operator{where}; Ctrl-C stops it", flush=True)

    try:
        serve(console, listen, announce)
    except OSError as exc:
        raise ConsoleError(f"--listen {args.listen}: {exc.strerror or exc}") from exc
    return 0
