"""Online backup and restore of a node's LMDB store (scripts/consortium.py backup / restore).

A backup opens the running node's environment from another process (LMDB allows that: readers
take a slot in lock.mdb and never block the writer) and writes a compacted copy from one read
transaction: a consistent snapshot of some committed block, taken while the node goes on
committing. The copy is then marked ``RESTORED`` (node/votes.py), so that a node started from
it abstains from voting until it has caught up past its vote record, and ``backup.json`` beside
it says whose store it is and at which height.

A restore puts a backup's data.mdb in place of a stopped node's data directory. The vote record
(beside the data directory) is left alone: it is what keeps the restored node from voting
against what it voted after the backup was taken.
"""

from __future__ import annotations

import json
import shutil
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lmdb

from node.storage import blocks
from node.storage.lmdb_store import DB_NAME
from node.votes import RESTORED

MANIFEST = "backup.json"
MANIFEST_BYTES_MAX = 1 << 16
OPEN_RETRIES = 5  # the map may be resized by the node between our open and our transaction


class BackupError(Exception):
    """A backup or restore cannot be done; the message says why."""


@dataclass(frozen=True)
class BackupInfo:
    member_id: str
    chain_id: str
    height: int  # the last executed block in the copy
    state_root: str  # hex
    bytes: int  # size of the compacted data.mdb
    seconds: float  # how long the copy took
    taken_at_ms: int


def _head(env: lmdb.Environment) -> tuple[int, bytes]:
    db = env.open_db(DB_NAME, create=False)
    with env.begin(db=db) as txn:
        raw = txn.get(blocks.LAST_EXECUTED)
        root = txn.get(blocks.STATE_ROOT) or b""
    return (0 if raw is None else struct.unpack(">Q", raw)[0]), bytes(root)


def take_backup(data_dir: Path, out: Path, member_id: str, chain_id: str) -> BackupInfo:
    """Copy the store in ``data_dir`` (its node may be running) to the new folder ``out``."""
    if not (data_dir / "data.mdb").exists():
        raise BackupError(f"{data_dir}: no LMDB store here")
    if out.exists() and any(out.iterdir()):
        raise BackupError(f"{out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for attempt in range(OPEN_RETRIES):
        # map_size 0 keeps the size the writer set; max_dbs as the node's (LmdbStore's default).
        env = lmdb.open(str(data_dir), readonly=True, lock=True, max_dbs=4, subdir=True)
        try:
            env.copy(str(out), compact=True)
            break
        except lmdb.MapResizedError:
            if attempt == OPEN_RETRIES - 1:
                raise
        finally:
            env.close()
    seconds = time.monotonic() - started
    copy = lmdb.open(
        str(out), max_dbs=4, subdir=True, map_size=(out / "data.mdb").stat().st_size + (64 << 20)
    )
    try:
        db = copy.open_db(DB_NAME, create=False)
        with copy.begin(db=db, write=True) as txn:
            txn.put(RESTORED, b"\x01")
        height, root = _head(copy)
    finally:
        copy.close()
    (out / "lock.mdb").unlink(missing_ok=True)
    info = BackupInfo(
        member_id=member_id,
        chain_id=chain_id,
        height=height,
        state_root=root.hex(),
        bytes=(out / "data.mdb").stat().st_size,
        seconds=round(seconds, 3),
        taken_at_ms=int(time.time() * 1000),
    )
    (out / MANIFEST).write_text(json.dumps(asdict(info), indent=2, sort_keys=True) + "\n")
    return info


def read_manifest(backup: Path) -> BackupInfo:
    path = backup / MANIFEST
    try:
        raw = path.read_bytes()
        if len(raw) > MANIFEST_BYTES_MAX:
            raise BackupError(f"{path}: larger than {MANIFEST_BYTES_MAX} bytes")
        return BackupInfo(**json.loads(raw))
    except (OSError, ValueError, TypeError) as exc:
        raise BackupError(f"{path}: not a backup manifest ({exc})") from exc


def check_backup(backup: Path, member_id: str, chain_id: str) -> BackupInfo:
    """The backup's manifest, if it is a backup of this member's store on this chain."""
    info = read_manifest(backup)
    if (info.member_id, info.chain_id) != (member_id, chain_id):
        raise BackupError(
            f"{backup} is a backup of {info.member_id} on chain {info.chain_id}, not {member_id} on {chain_id}"
        )
    if not (backup / "data.mdb").is_file():
        raise BackupError(f"{backup}: no data.mdb")
    return info


def restore_backup(backup: Path, data_dir: Path, member_id: str, chain_id: str) -> BackupInfo:
    """Replace the (stopped) node's data directory with the backup's store."""
    info = check_backup(backup, member_id, chain_id)
    staging = data_dir.with_name(data_dir.name + ".restoring")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copyfile(backup / "data.mdb", staging / "data.mdb")
    shutil.rmtree(data_dir, ignore_errors=True)
    staging.replace(data_dir)
    return info


def disk_bytes(data_dir: Path) -> int:
    """Bytes the store's files take on disk (allocated blocks: LMDB's file is sparse)."""
    total = 0
    for name in ("data.mdb", "lock.mdb"):
        path = data_dir / name
        if path.exists():
            total += path.stat().st_blocks * 512
    return total
