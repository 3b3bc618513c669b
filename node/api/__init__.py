"""LedgerService: the client API of a bank's node, by job, behind a narrow port (port.py):

  admission.py  Submit, SubmitBatch, and the admission of peer relays (the keys it knows)
  streams.py    WaitReceipt(s), WaitReceiptBatches, SubmitStream
  queries.py    GetTransaction, GetAccount, GetSupply, GetBlock(s), GetStatus
  authority.py  who may read what: read tokens and the keys behind them
  history.py    GetAccountHistory, GetEscrow, ListEscrows, Feed (node/history.py, node/feed.py)
  service.py    LedgerApi: builds the parts and registers their handlers

Requests arrive as raw bytes and are parsed here, so garbage gets INVALID_ARGUMENT with a
message instead of gRPC's generic deserialization failure. Status codes (the SDK relies on them):

  INVALID_ARGUMENT     not parseable, malformed field, amount out of range, limit exceeded,
                       too many envelopes/ids in one call, bad tx_id/height/account id format
  FAILED_PRECONDITION  wrong chain id; GetAccount/GetSupply: the node is below the request's
                       min_height and did not reach it within MIN_HEIGHT_WAIT_S
  UNAUTHENTICATED      a read without a valid read token (authority.py: none, malformed, for
                       another method or scope, expired, valid too long, bad signature);
                       no signature at all, one that does not verify, or no signer is a key
                       the ledger knows (node/api/admission.py); whether every *required* signer
                       signed depends on state, so execution decides that: the receipt then
                       carries result code MISSING_SIGNATURE, not recorded
  PERMISSION_DENIED    a read whose token proves a key that may not read it (authority.py)
  NOT_FOUND            unknown transaction, account or block. GetTransaction: also a transaction
                       this node holds but has not executed (pending), unless the request sets
                       include_pending: then it answers OK with status TX_STATUS_PENDING and
                       no receipt. Older clients, which do not set it, see what they always saw.
  RESOURCE_EXHAUSTED   past pending_requests_max (retry later), or the node is near its disk
                       budget (limits.disk_budget_bytes, disk_reserve_bytes); also gRPC's own
                       answer to a message over message_bytes_max
  DEADLINE_EXCEEDED    WaitReceipt: not committed and attested within the timeout
  OUT_OF_RANGE         Feed: from_height is past the node's next height and the node did not
                       get there within 3 s (node/feed.py)
Reads of current state (GetAccount, GetSupply) carry the height they were read at, in the same
read transaction as the state. GetBlocks serves a range of blocks, each as GetBlock does, bounded
in count and bytes; its reply names the next height to ask for and the node's last height.
Unknown accounts in a transfer are a stateful outcome: the transaction commits with result code
UNKNOWN_ACCOUNT in its receipt (only execution knows the state in its sequence position); it is
recorded as final only when the accounts that must sign exist (node/app/rules.py).
"""

from node.api.common import SERVICE, Abort, status_of
from node.api.service import LedgerApi

__all__ = ["SERVICE", "Abort", "LedgerApi", "status_of"]
