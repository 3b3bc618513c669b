"""The console's page (client/console.py serves it): HTML, a stylesheet and a script, each its
own response so the Content-Security-Policy allows no inline code. The script builds every
cell with textContent (never innerHTML): account ids, memos and errors come from the ledger
and are shown as text, whatever they hold."""

from __future__ import annotations

HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Consortium Ledger console</title>
<link rel="stylesheet" href="/console.css">
<script src="/console.js" defer></script>
</head>
<body>
<header>
  <h1>Consortium Ledger <span class="sub">operators' console</span></h1>
  <div class="meta">
    <span>chain <b id="chain">-</b></span>
    <span>reading as <b id="reader">-</b>'s operator</span>
    <span id="live" class="pill stale">connecting</span>
  </div>
</header>
<main>
  <section id="health-box" class="wide">
    <h2>Consortium health</h2>
    <p id="health" class="summary">-</p>
    <table id="nodes">
      <thead><tr><th>bank</th><th>node</th><th>state</th><th>view</th><th>primary</th><th>height</th>
      <th>state root</th><th>peers up</th><th>pending</th></tr></thead>
      <tbody></tbody>
    </table>
    <ul id="errors" class="errors"></ul>
  </section>
  <section>
    <h2>Recent blocks</h2>
    <table id="blocks">
      <thead><tr><th>height</th><th>time (UTC)</th><th>txs</th><th>view</th><th>commits by</th>
      <th>attested by</th><th>digest</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
  <section>
    <h2>Supply per asset</h2>
    <p class="note">at height <span id="supply-height">-</span>; reserves are not on the ledger yet</p>
    <table id="supply">
      <thead><tr><th>asset</th><th>issuer</th><th class="num">minted</th><th class="num">redeemed</th>
      <th class="num">outstanding</th><th class="num">reserves</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
  <section class="wide">
    <h2>Recent transactions</h2>
    <table id="transactions">
      <thead><tr><th>block</th><th>kind</th><th>what</th><th>result</th><th>tx id</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
  <section class="wide">
    <h2>Account lookup</h2>
    <form id="lookup" autocomplete="off">
      <input id="account-id" name="id" maxlength="64" placeholder="account id" spellcheck="false">
      <button type="submit">Look up</button>
      <span class="note">under your bank's read authority: its own accounts only</span>
    </form>
    <div id="account" hidden>
      <p class="summary"><b id="account-name"></b> at <span id="account-bank"></span>,
        <span id="account-state"></span>, as of height <span id="account-height"></span></p>
      <table id="balances">
        <thead><tr><th>asset</th><th class="num">available</th><th class="num">held</th></tr></thead>
        <tbody></tbody>
      </table>
    </div>
    <p id="account-error" class="error" hidden></p>
  </section>
</main>
</body>
</html>
"""

CSS = """
:root { --ok: #1a7f37; --bad: #cf222e; --warn: #9a6700; --line: #d0d7de; --muted: #57606a; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328; background: #f6f8fa; }
header { display: flex; justify-content: space-between; align-items: baseline; flex-wrap: wrap;
  padding: 12px 20px; background: #0d1117; color: #f0f6fc; }
h1 { margin: 0; font-size: 20px; } h1 .sub { font-weight: normal; color: #8b949e; font-size: 15px; }
.meta span { margin-left: 16px; }
main { display: grid; grid-template-columns: 1fr 1fr; gap: 14px; padding: 14px 20px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px; min-width: 0;
  overflow-x: auto; }
section.wide { grid-column: 1 / -1; }
h2 { margin: 0 0 8px; font-size: 15px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid var(--line); white-space: nowrap; }
td.wrap { white-space: normal; overflow-wrap: anywhere; }
th { color: var(--muted); font-weight: 600; font-size: 12px; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.mono { font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; font-size: 12px; }
.pill { padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; }
.up, .live { background: #dafbe1; color: var(--ok); }
.down, .stale { background: #ffebe9; color: var(--bad); }
.summary { margin: 4px 0 8px; }
.summary.ok { color: var(--ok); } .summary.bad { color: var(--bad); }
.note { color: var(--muted); font-size: 12px; margin: 0 0 6px; }
.error { color: var(--bad); }
.errors { color: var(--warn); margin: 6px 0 0; padding-left: 18px; }
.code-ok { color: var(--ok); } .code-bad { color: var(--bad); }
tr.down td { color: var(--muted); }
form { margin-bottom: 8px; }
input { font: inherit; padding: 4px 8px; width: 260px; }
button { font: inherit; padding: 4px 12px; }
"""

JS = r"""
"use strict";
const POLL_MS = 2000;      // between the end of one refresh and the next
const DEADLINE_MS = 9000;  // a request not answered by then is abandoned (the next poll retries)
let account = "";          // the account shown, refreshed with every poll

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells, cls) {
  const tr = el("tr", null, cls);
  for (const c of cells) {
    if (c instanceof Node) { const td = el("td"); td.append(c); tr.append(td); }
    else if (Array.isArray(c)) { tr.append(el("td", c[0], c[1])); }
    else { tr.append(el("td", c)); }
  }
  return tr;
}

function fill(id, rows) { document.querySelector("#" + id + " tbody").replaceChildren(...rows); }
function setText(id, text) { document.getElementById(id).textContent = String(text); }
function utc(ms) { return new Date(ms).toISOString().replace("T", " ").slice(0, 23); }
function short(hex) { return hex ? hex.slice(0, 16) : "-"; }

async function getJSON(url) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), DEADLINE_MS);
  try {
    const resp = await fetch(url, { signal: ctl.signal, cache: "no-store" });
    return { status: resp.status, doc: await resp.json() };
  } finally {
    clearTimeout(timer);
  }
}

function renderNodes(doc) {
  const h = doc.health;
  const health = document.getElementById("health");
  health.textContent = `${h.up} of ${h.n} nodes up (a block needs ${h.quorum}); height ${h.height}; ` +
    (h.roots_agree ? "state roots agree" : "STATE ROOTS DIFFER at the top height") +
    (h.views.length > 1 ? `; views ${h.views.join(", ")}` : "");
  health.className = "summary " + (h.ok ? "ok" : "bad");
  fill("nodes", doc.nodes.map((n) => {
    const state = el("span", n.up ? "up" : "down", "pill " + (n.up ? "up" : "down"));
    if (!n.up) {
      const tr = row([n.bank, [n.node, "mono"], state, "-", "-", "-", "-", "-", "-"], "down");
      tr.title = n.error || "";
      tr.dataset.bank = n.bank;
      return tr;
    }
    const downPeers = n.peers.filter((p) => !p.up).map((p) => p.bank);
    const peers = `${n.peers_up}/${n.peers.length}` + (downPeers.length ? ` (no link: ${downPeers.join(", ")})` : "");
    const tr = row([n.bank, [n.node, "mono"], state, [n.view, "num"], [n.primary, "num"], [n.height, "num"],
      [short(n.state_root), "mono"], peers, [n.pending, "num"]]);
    tr.dataset.bank = n.bank;
    tr.dataset.height = String(n.height);
    return tr;
  }));
  document.getElementById("errors").replaceChildren(...doc.errors.map((e) => el("li", e)));
}

function renderBlocks(doc) {
  fill("blocks", doc.blocks.map((b) => {
    const tr = row([[b.height, "num"], utc(b.timestamp_ms).slice(11), [b.tx_count, "num"], [b.view, "num"],
      b.commit_signers.join(" "), b.attested_by.join(" ") || "not yet", [short(b.digest), "mono"]]);
    tr.dataset.height = String(b.height);
    return tr;
  }));
  fill("transactions", doc.transactions.map((t) => {
    const ok = t.result === "OK";
    const tr = row([`${t.height}·${t.index}`, t.kind || "-", [t.summary || "-", "wrap"],
      [t.result || "-", ok ? "code-ok" : "code-bad"], [short(t.tx_id), "mono"]]);
    tr.dataset.tx = t.tx_id;
    return tr;
  }));
}

function renderSupply(doc) {
  const s = doc.supply;
  setText("supply-height", s ? s.height : "unknown");
  fill("supply", (s ? s.assets : []).map((a) => {
    const tr = row([a.asset, a.issuer, [a.minted, "num"], [a.redeemed, "num"], [a.outstanding, "num"],
      [a.reserves, "num"]]);
    tr.dataset.asset = a.asset;
    return tr;
  }));
}

async function refreshAccount() {
  if (!account) return;
  const shown = document.getElementById("account");
  const error = document.getElementById("account-error");
  const { status, doc } = await getJSON("/api/account?id=" + encodeURIComponent(account));
  if (status !== 200) {
    shown.hidden = true;
    error.hidden = false;
    error.textContent = `${account}: ${doc.code || status} ${doc.error}`;
    return;
  }
  error.hidden = true;
  shown.hidden = false;
  setText("account-name", doc.account_id);
  setText("account-bank", doc.member_id);
  setText("account-state", doc.frozen ? "frozen" : "active");
  setText("account-height", doc.height);
  fill("balances", doc.balances.length ? doc.balances.map((b) => {
    const tr = row([b.asset, [b.available, "num"], [b.held, "num"]]);
    tr.dataset.asset = b.asset;
    return tr;
  }) : [row(["no balance", "-", "-"])]);
}

async function poll() {
  const live = document.getElementById("live");
  try {
    const { status, doc } = await getJSON("/api/overview");
    if (status !== 200) throw new Error(doc.error || String(status));
    setText("chain", doc.chain_id);
    setText("reader", doc.reader);
    renderNodes(doc);
    renderBlocks(doc);
    renderSupply(doc);
    await refreshAccount();
    live.textContent = "live, updated " + utc(doc.time_ms).slice(11) + " UTC";
    live.className = "pill live";
  } catch (err) {
    live.textContent = "not updating: " + (err && err.name === "AbortError" ? "no answer in time" : String(err));
    live.className = "pill stale";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("lookup").addEventListener("submit", (ev) => {
    ev.preventDefault();
    account = document.getElementById("account-id").value.trim();
    refreshAccount().catch((err) => {
      const error = document.getElementById("account-error");
      error.hidden = false;
      error.textContent = String(err);
    });
  });
  poll();
});
"""
