"""A wallet: a directory of Ed25519 key files (ledger.crypto format), one per label."""

from __future__ import annotations

import re
from pathlib import Path

from ledger.crypto import KeyFile, KeyFileError, SigningKey, list_keys, load_key, save_key

# Labels become file names: keep them to a safe alphabet so a label cannot escape the directory.
LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)


class WalletError(Exception):
    """A wallet operation failed; the message names the label or file."""


class Wallet:
    """Keys stored as ``<directory>/<label>.key``, readable by the owner only.

    A key file is never overwritten: losing a client key means losing access to its account.
    """

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    def _path(self, label: str) -> Path:
        if not LABEL_RE.fullmatch(label) or label.endswith(".key"):
            raise WalletError(f"{label!r}: a key label is 1..64 of A-Z a-z 0-9 _ . - (starting alphanumeric)")
        return self.directory / f"{label}.key"

    def create(self, label: str) -> KeyFile:
        """Generate a new key, save it under ``label`` and return it."""
        key = SigningKey.generate()
        self.save(label, key)
        return KeyFile(label=label, public_key=key.public_key, key=key)

    def save(self, label: str, key: SigningKey) -> None:
        """Store an existing key under ``label``; refuses to replace an existing file."""
        try:
            save_key(self._path(label), key, label)
        except KeyFileError as exc:
            raise WalletError(str(exc)) from exc

    def load(self, label: str) -> KeyFile:
        """The key stored under ``label``."""
        path = self._path(label)
        if not path.exists():
            known = ", ".join(self.labels()) or "none"
            raise WalletError(f"no key {label!r} in {self.directory} (known: {known})")
        try:
            return load_key(path)
        except KeyFileError as exc:
            raise WalletError(str(exc)) from exc

    def key_files(self) -> list[KeyFile]:
        """Every readable key, sorted by label."""
        if not self.directory.is_dir():
            return []
        return list_keys(self.directory)

    def labels(self) -> list[str]:
        return [k.label for k in self.key_files()]

    def find_public(self, public_key: bytes) -> KeyFile | None:
        """The key whose public half is ``public_key``, if this wallet holds it."""
        for k in self.key_files():
            if k.public_key == public_key:
                return k
        return None
