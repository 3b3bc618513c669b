"""The node config file: which genesis, which member this node is, where its key and data live,
where it listens, and the node-local limits (not consensus: each bank may tune them).

One loader, ``load_node_config``; every error names the file and the field. Each limit has one
name, one default and one validation, here (NodeLimits); the replica's config is derived from
it (NodeLimits.replica_config), as are the driver's (node/core.py: CoreConfig).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from node.core import CoreConfig
from node.pbft.config import ReplicaConfig
from node.storage.prune import Retention

CONFIG_BYTES_MAX = 1 << 16
PENDING_TTL_FACTOR = 30  # forget an admitted request after this many view-change timeouts


class ConfigError(Exception):
    """The node config is missing or wrong; the message names the file and the field."""


@dataclass(frozen=True)
class NodeLimits:
    """Node-local limits (docs/ARCHITECTURE.md "Node-local limits"). Past one: a clear error."""

    message_bytes_max: int = 4 << 20  # one client request on the API port
    # One message on the replica port (and an API reply such as GetBlock). A VIEW-CHANGE carries
    # the batches of its prepared certificates and a NEW-VIEW 2f+1 of those, so this must hold
    # several full batches; carrying digests and fetching batches instead is the real fix.
    peer_message_bytes_max: int = 128 << 20
    batch_size_max: int = 500  # envelopes per proposed block
    batch_delay_ms: int = 20  # the least a batch that is not full waits to fill (primary)
    batch_delay_max_ms: int = 100  # the most (node/pbft/config.py: ReplicaConfig.batch_ready)
    # In between: this long per transaction/s arriving. 100 suits 4 members; a block costs more
    # with more members, and scripts/consortium.py writes 25 x n.
    batch_delay_per_tps_us: int = 100
    pending_requests_max: int = 20_000  # admitted but not yet executed client transactions
    log_window: int = 200  # PBFT high - low watermark
    checkpoint_interval: int = 50  # sequences between checkpoints
    view_change_timeout_ms: int = 2_000  # a pending request older than this starts a view change
    submit_batch_max: int = 1_000  # envelopes per SubmitBatch call
    receipt_wait_ms_max: int = 30_000  # cap on WaitReceipt(s) timeout_ms
    tick_ms: int = 20  # driver tick period (timers, batching)
    fetch_blocks_max: int = 64  # blocks per FetchBlocks response
    peer_queue_max: int = 10_000  # outbound messages queued per peer before dropping
    peer_backoff_ms_max: int = 2_000  # reconnect backoff ceiling
    lmdb_map_size_bytes: int = 1 << 30  # the map to start with; it grows up to disk_budget_bytes
    disk_budget_bytes: int = 64 << 30  # the most the store may use
    # New client transactions are refused (RESOURCE_EXHAUSTED) within this of the budget or of a
    # full filesystem; what was already ordered still executes into it.
    disk_reserve_bytes: int = 256 << 20
    # Connections (both ports; docs/ARCHITECTURE.md "Connections"). gRPC core can cap the
    # connections of a listening port, not those of one source address, so the cap is per port,
    # lowered at start to fit the open-file limit minus a reserve (node/__main__.py).
    connections_max: int = 8_192  # open connections per listening port; past it, closed at accept
    handshake_timeout_ms: int = 5_000  # a connection that has not sent HTTP/2 SETTINGS by then is closed
    connection_idle_ms: int = 120_000  # a connection with no call for this long gets GOAWAY
    streams_per_connection_max: int = 1_000  # concurrent calls per client connection (HTTP/2 setting)
    # ... per peer connection: its stream, a few relays and fetches. Each call may carry a message
    # of peer_message_bytes_max, so this bounds what one connection can make us buffer.
    peer_streams_per_connection_max: int = 256
    # Our keepalive pings on the connections we dial, every keepalive_ms; a peer that does not
    # answer one within keepalive_timeout_ms is dropped. Our servers accept pings spaced at
    # least keepalive_ms / 2 apart (what our own channels send, with room for timer jitter).
    keepalive_ms: int = 10_000
    keepalive_timeout_ms: int = 5_000
    # events.log rotates past this size (events.log -> events.log.1 -> ...), keeping this many
    # old files besides the current one.
    log_file_bytes_max: int = 64 << 20
    log_files_kept: int = 5
    # The replica's own timers and memory (node/pbft/config.py explains each).
    view_change_backoff_max: int = 6  # the view-change timeout doubles at most this many times
    retransmit_ms: int = 1_000  # own votes are re-sent this often (lossy links)
    recent_executed_max: int = 10_000  # tx_ids remembered to drop late duplicates
    proposals_in_flight_max: int = 2  # blocks the primary proposed and has not executed yet
    timestamp_skew_ms_max: int = 30_000  # a backup will not prepare a block stamped further ahead
    # State sync (node/statesync.py, node/snapshot.py). At start a node syncs by snapshot when
    # the newest certified checkpoint is this many blocks past its head (or no peer keeps the
    # blocks after its head); a smaller gap is replayed block by block.
    state_sync_lag_min: int = 1_000
    state_sync_timeout_ms: int = 3_600_000  # past this the node starts without it (and catches up)
    snapshot_chunk_bytes_max: int = 1 << 20  # one FetchSnapshot answer, about (and at most half
    # of peer_message_bytes_max)
    # A snapshot being served holds a read transaction: LMDB cannot reuse pages freed meanwhile.
    snapshot_session_idle_ms: int = 30_000
    snapshot_session_ms_max: int = 900_000

    def __post_init__(self) -> None:
        """The one validation of the limits (ValueError; the config loader names the file)."""
        for f in fields(self):
            value = getattr(self, f.name)
            least = 0 if f.name in _MAY_BE_ZERO else 1
            if isinstance(value, bool) or not isinstance(value, int) or not least <= value < (1 << 63):
                kind = "a non-negative" if least == 0 else "a positive"
                raise ValueError(f"{f.name}: {kind} integer, got {value!r}")
        if self.disk_reserve_bytes >= self.disk_budget_bytes:
            raise ValueError("disk_reserve_bytes must be less than disk_budget_bytes")
        if self.checkpoint_interval * 2 > self.log_window or self.log_window % self.checkpoint_interval:
            raise ValueError("log_window must be a multiple of checkpoint_interval, at least 2x")

    def replica_config(self, n: int, f: int, replica_id: int, chain_id: str) -> ReplicaConfig:
        """The PBFT replica's config: the cluster's shape (from genesis) and these limits."""
        return ReplicaConfig(
            n=n,
            f=f,
            replica_id=replica_id,
            chain_id=chain_id,
            batch_size_max=self.batch_size_max,
            batch_delay_ms=self.batch_delay_ms,
            batch_delay_max_ms=self.batch_delay_max_ms,
            batch_delay_per_tps_us=self.batch_delay_per_tps_us,
            checkpoint_interval=self.checkpoint_interval,
            log_window=self.log_window,
            view_change_timeout_ms=self.view_change_timeout_ms,
            view_change_backoff_max=self.view_change_backoff_max,
            retransmit_ms=self.retransmit_ms,
            pending_requests_max=self.pending_requests_max,
            peer_message_bytes_max=self.peer_message_bytes_max,
            recent_executed_max=self.recent_executed_max,
            proposals_in_flight_max=self.proposals_in_flight_max,
            timestamp_skew_ms_max=self.timestamp_skew_ms_max,
        )

    def core_config(self) -> CoreConfig:
        """The node core's config (node/core.py)."""
        return CoreConfig(
            tick_ms=self.tick_ms,
            pending_requests_max=self.pending_requests_max,
            pending_ttl_ms=self.view_change_timeout_ms * PENDING_TTL_FACTOR,
            # A fifth of the view-change timeout. Half saved another ~4% CPU in closed loop, but
            # chaos seed 303 then took 1.4-4.4 s to commit again after a backup was killed or
            # paused, against 0.5 s at most with a fifth (both after the restart-clock fix): the
            # node takes the copies it has not relayed yet with it, and they commit only once
            # clients resubmit elsewhere (the likely cause, not traced message by message).
            relay_delay_ms=self.view_change_timeout_ms // 5,
        )


# Limits that may be 0: a batch may be proposed without waiting for company.
_MAY_BE_ZERO = frozenset({"batch_delay_ms", "batch_delay_max_ms", "batch_delay_per_tps_us"})


@dataclass(frozen=True)
class NodeConfig:
    genesis_path: Path
    member_id: str
    key_path: Path  # the member's node key (ledger.crypto key file)
    data_dir: Path  # LMDB environment lives here
    api_listen: str  # host:port for LedgerService (+ health, reflection)
    replica_listen: str  # host:port for ReplicaService
    log_path: Path | None = None  # JSON event lines; None = stderr
    limits: NodeLimits = NodeLimits()
    # TLS on both ports (mutual on the replica port) with this certificate, issued by the bank's
    # CA that genesis lists, and its key. ``tls`` false: plaintext, for debugging only (the node
    # logs a warning event); the paths are then not needed.
    tls: bool = True
    tls_cert_path: Path | None = None
    tls_key_path: Path | None = None
    metrics_listen: str | None = None  # host:port for Prometheus metrics (/metrics); None = off
    # Which old blocks are pruned (node/storage/prune.py); the default keeps every block.
    retention: Retention = field(default_factory=Retention)
    # The vote record (node/votes.py): the highest view and sequence this node may have voted
    # in, kept outside data_dir so that a restore or a wipe of data_dir does not take it back.
    # None: beside data_dir, as <data_dir>.votes.json.
    vote_record_path: Path | None = None
    # Sync by snapshot at start when far behind (node/statesync.py); false: always replay blocks.
    state_sync: bool = True

    @property
    def votes_path(self) -> Path:
        if self.vote_record_path is not None:
            return self.vote_record_path
        return self.data_dir.with_name(self.data_dir.name + ".votes.json")

    def to_json(self) -> str:
        doc: dict[str, Any] = {
            "genesis_path": str(self.genesis_path),
            "member_id": self.member_id,
            "key_path": str(self.key_path),
            "data_dir": str(self.data_dir),
            "api_listen": self.api_listen,
            "replica_listen": self.replica_listen,
            "log_path": None if self.log_path is None else str(self.log_path),
            "metrics_listen": self.metrics_listen,
            "limits": asdict(self.limits),
            "tls": self.tls,
        }
        if not self.retention.archive:
            doc["retention"] = {
                k: v for k, v in (("blocks", self.retention.blocks), ("hours", self.retention.hours)) if v
            }
        if self.vote_record_path is not None:
            doc["vote_record_path"] = str(self.vote_record_path)
        if not self.state_sync:
            doc["state_sync"] = False
        for key, value in (("tls_cert_path", self.tls_cert_path), ("tls_key_path", self.tls_key_path)):
            if value is not None:
                doc[key] = str(value)
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"


_REQUIRED_STR = ("genesis_path", "member_id", "key_path", "data_dir", "api_listen", "replica_listen")
_LIMIT_NAMES = {f.name for f in fields(NodeLimits)}


def _listen(value: str, where: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: expected host:port with port 1..65535, got {value!r}")
    return value


def parse_node_config(data: Any, base_dir: Path, where: str = "config") -> NodeConfig:
    """Validate a decoded config; relative paths are relative to base_dir (the file's folder)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    known = set(_REQUIRED_STR) | {
        "log_path",
        "limits",
        "metrics_listen",
        "tls",
        "tls_cert_path",
        "tls_key_path",
        "retention",
        "vote_record_path",
        "state_sync",
    }
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
    values: dict[str, str] = {}
    for key in _REQUIRED_STR:
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}.{key}: required, a non-empty string")
        values[key] = value

    def path(text: str) -> Path:
        p = Path(text)
        return p if p.is_absolute() else base_dir / p

    log_path: Path | None = None
    raw_log = data.get("log_path")
    if raw_log is not None:
        if not isinstance(raw_log, str) or not raw_log:
            raise ConfigError(f"{where}.log_path: a non-empty string or null")
        log_path = path(raw_log)

    tls = data.get("tls", True)
    if not isinstance(tls, bool):
        raise ConfigError(f"{where}.tls: true or false, got {tls!r}")
    tls_paths: dict[str, Path | None] = {}
    for key in ("tls_cert_path", "tls_key_path"):
        raw = data.get(key)
        if raw is None and tls:
            raise ConfigError(
                f"{where}.{key}: required while tls is on (the default); "
                '"tls": false runs plaintext, for debugging only'
            )
        if raw is not None and (not isinstance(raw, str) or not raw):
            raise ConfigError(f"{where}.{key}: a non-empty string")
        tls_paths[key] = None if raw is None else path(raw)
    metrics_listen = data.get("metrics_listen")
    if metrics_listen is not None:
        if not isinstance(metrics_listen, str):
            raise ConfigError(f"{where}.metrics_listen: host:port or null")
        _listen(metrics_listen, f"{where}.metrics_listen")

    retention = _retention(data.get("retention", {}), f"{where}.retention")
    state_sync = data.get("state_sync", True)
    if not isinstance(state_sync, bool):
        raise ConfigError(f"{where}.state_sync: true or false, got {state_sync!r}")
    raw_votes = data.get("vote_record_path")
    if raw_votes is not None and (not isinstance(raw_votes, str) or not raw_votes):
        raise ConfigError(f"{where}.vote_record_path: a non-empty string or null")

    raw_limits = data.get("limits", {})
    if not isinstance(raw_limits, dict):
        raise ConfigError(f"{where}.limits: expected an object")
    bad = set(raw_limits) - _LIMIT_NAMES
    if bad:
        raise ConfigError(f"{where}.limits: unknown field(s) {sorted(bad)}")
    try:
        limits = NodeLimits(**raw_limits)
    except ValueError as exc:
        raise ConfigError(f"{where}.limits: {exc}") from exc

    return NodeConfig(
        genesis_path=path(values["genesis_path"]),
        member_id=values["member_id"],
        key_path=path(values["key_path"]),
        data_dir=path(values["data_dir"]),
        api_listen=_listen(values["api_listen"], f"{where}.api_listen"),
        replica_listen=_listen(values["replica_listen"], f"{where}.replica_listen"),
        log_path=log_path,
        limits=limits,
        tls=tls,
        tls_cert_path=tls_paths["tls_cert_path"],
        tls_key_path=tls_paths["tls_key_path"],
        metrics_listen=metrics_listen,
        retention=retention,
        vote_record_path=None if raw_votes is None else path(raw_votes),
        state_sync=state_sync,
    )


def _retention(raw: Any, where: str) -> Retention:
    """{"blocks": N, "hours": H}, either or both; {} (or no field) is archive mode."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f'{where}: an object such as {{"blocks": 100000}} or {{"hours": 24}}; {{}} keeps all'
        )
    bad = set(raw) - {"blocks", "hours"}
    if bad:
        raise ConfigError(f"{where}: unknown field(s) {sorted(bad)} (blocks, hours)")
    values: dict[str, int] = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < (1 << 40):
            raise ConfigError(f"{where}.{key}: a positive integer, got {value!r}")
        values[key] = value
    return Retention(blocks=values.get("blocks"), hours=values.get("hours"))


def load_node_config(path: Path) -> NodeConfig:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read node config: {exc.strerror}") from exc
    if len(raw) > CONFIG_BYTES_MAX:
        raise ConfigError(f"{path}: larger than {CONFIG_BYTES_MAX} bytes")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{path}: not JSON ({exc})") from exc
    return parse_node_config(data, path.resolve().parent, where=str(path))
