"""How ledgerctl prints: aligned tables for people, one JSON document for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from client.amounts import format_amount
from client.models import AccountInfo, Committed, Indefinite, NodeStatusInfo, Rejected, Supply
from client.proofs import VerifiedBalances
from client.verify import VerifiedBlock
from ledger.genesis import Genesis
from ledger.v1 import tx_pb2


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], out: TextIO | None = None) -> None:
    """Print rows under headers, columns padded; numbers right-aligned."""
    out = out or sys.stdout
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(_is_number(r[i]) for r in cells) and bool(cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    print(line(list(headers)), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for r in cells:
        print(line(r), file=out)


def _is_number(text: str) -> bool:
    return text.replace(".", "", 1).lstrip("-").isdigit()


def emit_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True))


def _scale(genesis: Genesis, asset: str) -> int:
    a = genesis.asset(asset)
    return a.scale if a is not None else 0


def outcome_doc(outcome: Committed | Rejected | Indefinite) -> dict[str, Any]:
    if isinstance(outcome, Committed):
        r = outcome.receipt
        return {
            "status": "committed" if outcome.final else "included_not_final",
            "tx_id": outcome.tx_id.hex(),
            "result": outcome.code_name,
            "detail": outcome.detail,
            "height": r.height,
            "index": r.index,
            "commit_signers": list(r.block.commit_signers),
            "attested_by": list(r.attested.signers),
            "state_root": r.attested.state_root.hex(),
            "node": outcome.endpoint,
        }
    if isinstance(outcome, Rejected):
        return {
            "status": "rejected",
            "tx_id": outcome.tx_id.hex(),
            "refusals": [{"node": n, "code": c, "detail": d} for n, c, d in outcome.refusals],
        }
    return {
        "status": "indefinite",
        "tx_id": outcome.tx_id.hex(),
        "reason": outcome.reason,
        "errors": list(outcome.errors),
    }


def print_outcome(outcome: Committed | Rejected | Indefinite, as_json: bool) -> None:
    doc = outcome_doc(outcome)
    if as_json:
        emit_json(doc)
        return
    if isinstance(outcome, Committed):
        mark = "committed" if outcome.ok else "committed, but refused by the ledger"
        if not outcome.final:
            mark = "included, not final (a well-signed copy may still commit)"
        detail = f" ({outcome.detail})" if outcome.detail else ""
        print(f"{mark}: {outcome.code_name}{detail}")
        print(f"  tx      {doc['tx_id']}")
        print(f"  block   {doc['height']} index {doc['index']}")
        print(
            f"  proof   commits from replicas {doc['commit_signers']}, results attested by {doc['attested_by']}"
        )
    elif isinstance(outcome, Rejected):
        print(f"rejected by the nodes' checks: {outcome.detail}")
        print(f"  tx      {doc['tx_id']}")
        for r in doc["refusals"]:
            print(f"  {r['node']}: {r['code']} {r['detail']}")
    else:
        print(f"not confirmed in time: {outcome.reason}")
        print(f"  tx      {doc['tx_id']}")
        print("  it may still commit; check with `ledgerctl tx TX_ID`, or resubmit the same envelope")
        for e in outcome.errors[-3:]:
            print(f"  {e}")


def account_doc(acc: AccountInfo, genesis: Genesis) -> dict[str, Any]:
    return {
        "account_id": acc.account_id,
        "member_id": acc.member_id,
        "owner_key": acc.owner_key.hex(),
        "frozen": acc.frozen,
        "height": acc.height,  # the node's last executed block when it read the account
        "balances": [
            {
                "asset": b.asset,
                "available": format_amount(b.available_minor, _scale(genesis, b.asset)),
                "held": format_amount(b.held_minor, _scale(genesis, b.asset)),
                "available_minor": b.available_minor,
                "held_minor": b.held_minor,
            }
            for b in acc.balances
        ],
    }


def print_accounts(accounts: Sequence[AccountInfo], genesis: Genesis, as_json: bool) -> None:
    docs = [account_doc(a, genesis) for a in accounts]
    if as_json:
        emit_json(docs[0] if len(docs) == 1 else docs)
        return
    rows = []
    for d in docs:
        state = "frozen" if d["frozen"] else "active"
        if not d["balances"]:
            rows.append([d["account_id"], d["member_id"], state, "-", "-", "-"])
        for b in d["balances"]:
            rows.append([d["account_id"], d["member_id"], state, b["asset"], b["available"], b["held"]])
    table(["account", "bank", "state", "asset", "available", "held"], rows)


def proven_doc(p: VerifiedBalances, genesis: Genesis) -> dict[str, Any]:
    return {
        "account_id": p.account_id,
        "exists": p.exists,
        "member_id": p.member_id,
        "owner_key": p.owner_key.hex(),
        "frozen": p.frozen,
        "verified": True,
        "checkpoint": p.sequence,  # the balances are the state after this block
        "state_root": p.state_root.hex(),
        "tree_root": p.tree_root.hex(),
        "signers": [genesis.members[i].member_id for i in p.signers],
        "balances": [
            {
                "asset": b.asset,
                "available": format_amount(b.available, _scale(genesis, b.asset)),
                "held": format_amount(b.held, _scale(genesis, b.asset)),
                "available_minor": b.available,
                "held_minor": b.held,
            }
            for b in p.balances
            if b.available or b.held
        ],
    }


def print_proven(proven: Sequence[VerifiedBalances], genesis: Genesis, as_json: bool) -> None:
    """Balances a proof verified against genesis (ledgerctl balance --proof, verify)."""
    docs = [proven_doc(p, genesis) for p in proven]
    if as_json:
        emit_json(docs[0] if len(docs) == 1 else docs)
        return
    for d in docs:
        state = "no such account" if not d["exists"] else ("frozen" if d["frozen"] else "active")
        print(
            f"{d['account_id']} ({d['member_id'] or '-'}, {state}): verified at checkpoint "
            f"{d['checkpoint']}, tree root {d['tree_root'][:16]}, signed by {', '.join(d['signers'])}"
        )
    rows = [[d["account_id"], b["asset"], b["available"], b["held"]] for d in docs for b in d["balances"]]
    table(["account", "asset", "available", "held"], rows)


def supply_doc(supply: Supply) -> dict[str, Any]:
    return {
        "height": supply.height,
        "assets": [
            {
                "asset": s.asset,
                "issuer": s.issuer,
                "minted": format_amount(s.minted_minor, s.scale),
                "redeemed": format_amount(s.redeemed_minor, s.scale),
                "outstanding": format_amount(s.outstanding_minor, s.scale),
                "outstanding_minor": s.outstanding_minor,
            }
            for s in supply.assets
        ],
    }


def print_supply(supply: Supply, as_json: bool) -> None:
    doc = supply_doc(supply)
    if as_json:
        emit_json(doc)
        return
    print(f"supply at height {supply.height}")
    table(
        ["asset", "issuer", "minted", "redeemed", "outstanding"],
        [[a["asset"], a["issuer"], a["minted"], a["redeemed"], a["outstanding"]] for a in doc["assets"]],
    )


def status_doc(s: NodeStatusInfo | str, endpoint: str) -> dict[str, Any]:
    if isinstance(s, str):
        return {"node": endpoint, "up": False, "error": s}
    return {
        "node": endpoint,
        "up": True,
        "member_id": s.member_id,
        "replica": s.replica,
        "view": s.view,
        "primary": s.primary,
        "height": s.last_executed,
        "stable_checkpoint": s.stable_checkpoint,
        "state_root": s.state_root.hex(),
        "pending": s.pending_requests,
    }


def print_statuses(statuses: dict[str, NodeStatusInfo | str], as_json: bool) -> None:
    docs = [status_doc(s, ep) for ep, s in statuses.items()]
    if as_json:
        emit_json(docs)
        return
    rows = []
    for d in docs:
        if not d["up"]:
            rows.append([d["node"], "-", "down", "-", "-", "-", "-"])
        else:
            rows.append(
                [d["node"], d["member_id"], "up", d["view"], d["primary"], d["height"], d["state_root"][:16]]
            )
    table(["node", "bank", "state", "view", "primary", "height", "state root"], rows)


def block_doc(b: VerifiedBlock) -> dict[str, Any]:
    h = b.block.header
    return {
        "height": h.height,
        "timestamp_ms": h.timestamp_ms,
        "digest": b.block.digest.hex(),
        "view": b.block.view,
        "commit_signers": list(b.block.commit_signers),
        "attested_by": list(b.attested.signers) if b.attested else [],
        "state_root": b.attested.state_root.hex() if b.attested else None,
        "tx_count": h.tx_count,
        "bodies": b.bodies,  # False: served without its transactions (not an operator's key)
        "transactions": [
            {
                "tx_id": tx_id.hex(),
                "result": _code_name(b.results[i].code) if i < len(b.results) else None,
            }
            for i, tx_id in enumerate(b.tx_ids)
        ],
    }


def _code_name(code: tx_pb2.ResultCode.ValueType) -> str:
    return tx_pb2.ResultCode.Name(code)


def print_block(b: VerifiedBlock, as_json: bool) -> None:
    doc = block_doc(b)
    if as_json:
        emit_json(doc)
        return
    print(f"block {doc['height']} (verified: commits from {doc['commit_signers']}, view {doc['view']})")
    print(f"  digest      {doc['digest']}")
    print(f"  timestamp   {doc['timestamp_ms']} ms")
    if doc["state_root"]:
        print(f"  state root  {doc['state_root']} (attested by {doc['attested_by']})")
    if not b.bodies:
        print(
            f"  {doc['tx_count']} transactions, not shown: the node serves bodies to members' operator keys"
        )
        return
    table(
        ["#", "tx", "result"],
        [[i, t["tx_id"], t["result"] or "-"] for i, t in enumerate(doc["transactions"])],
    )
