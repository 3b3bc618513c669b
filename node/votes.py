"""The vote record: what this node may have voted, kept outside its data directory.

A replica persists every vote in its journal (LMDB) before sending it, so a restart from the
same data directory cannot equivocate. A restore from an older backup, or a wiped data
directory, brings back a journal that lacks what the replica voted since. The vote record is a
small JSON file beside the data directory (node config ``vote_record_path``; by default
``<data_dir>.votes.json``): the highest view the replica entered and the highest sequence it
could vote on (its stable checkpoint + log_window: nothing outside the watermark window is ever
voted). ``VoteGuard.before_send`` raises it, written and fsynced, before the messages of a
group leave (the driver's ``before_send`` hook, after the group's journal records are on disk),
with one window to spare, so it is rewritten about once per log_window sequences and at each
view change. A backup and a wipe leave it where it is (scripts/consortium.py).

On start (``start_floor``), the replica is given the record as its vote floor when its journal
is older than the record says: the store is marked as restored from a backup (``RESTORED``,
written into every backup copy), or it is empty while the record is not (a wiped data
directory), or the journal's view is below the record's. It then abstains until the others'
stable checkpoint passes the floor (node/pbft/replica.py, "abstaining"); once it votes again the
mark is removed. Without the record (a new host with only a backup) the node must not be
started: ``consortium.py restore`` refuses unless told where the record is.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from node.storage.kv import KVReader, KVStore

RESTORED = b"m/restored"  # in a backup copy: whoever starts from it abstains first
RECORD_BYTES_MAX = 4096


class VoteRecordError(Exception):
    """The vote record cannot be read or written (the node must not vote without it)."""


@dataclass(frozen=True)
class VoteRecord:
    view: int = 0
    sequence: int = 0

    @staticmethod
    def load(path: Path) -> VoteRecord:
        """The record at ``path``; a missing file is a node that never voted."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return VoteRecord()
        except OSError as exc:
            raise VoteRecordError(f"{path}: cannot read the vote record: {exc.strerror}") from exc
        try:
            doc = json.loads(raw[: RECORD_BYTES_MAX + 1])
            view, sequence = doc["view"], doc["sequence"]
        except (ValueError, KeyError, TypeError) as exc:
            raise VoteRecordError(f"{path}: not a vote record ({exc})") from exc
        if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in (view, sequence)):
            raise VoteRecordError(f"{path}: view and sequence must be non-negative integers")
        return VoteRecord(view, sequence)

    def save(self, path: Path) -> None:
        """Atomically and durably: a temporary file, fsync, rename, fsync of the folder."""
        tmp = path.with_name(path.name + ".tmp")
        data = json.dumps({"view": self.view, "sequence": self.sequence}).encode() + b"\n"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            tmp.replace(path)
            folder = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        except OSError as exc:
            raise VoteRecordError(f"{path}: cannot write the vote record: {exc.strerror}") from exc


def start_floor(
    record: VoteRecord, r: KVReader, journal_empty: bool, journal_view: int
) -> tuple[int, int] | None:
    """The replica's vote floor at start, or None when its journal is as new as its votes."""
    if record == VoteRecord():
        return None
    restored = r.get(RESTORED) is not None
    wiped = journal_empty and r.get(b"m/last_executed") is None
    if restored or wiped or journal_view < record.view:
        return (record.view, record.sequence)
    return None


class Voter(Protocol):
    @property
    def view(self) -> int: ...

    @property
    def stable_seq(self) -> int: ...

    @property
    def abstaining(self) -> bool: ...


class VoteGuard:
    """Keeps the record ahead of what the replica may send (see the module docstring)."""

    def __init__(
        self, path: Path, record: VoteRecord, replica: Voter, log_window: int, store: KVStore
    ) -> None:
        self.path = path
        self.record = record
        self.replica = replica
        self.log_window = log_window
        self.store = store
        self.writes = 0
        self._restored = replica.abstaining

    def before_send(self) -> None:
        r = self.replica
        if r.abstaining:
            return  # it sends checkpoints and attestations only: nothing the record covers
        if self._restored:
            self._restored = False
            with self.store.write() as w:  # in the driver's loop: it votes again
                w.delete(RESTORED)
        reach = r.stable_seq + self.log_window
        if r.view <= self.record.view and reach <= self.record.sequence:
            return
        self.record = VoteRecord(
            max(r.view, self.record.view), max(reach + self.log_window, self.record.sequence)
        )
        self.record.save(self.path)
        self.writes += 1
