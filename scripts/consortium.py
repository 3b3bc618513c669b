#!/usr/bin/env python3
"""A local consortium in one command: genesis, keys, one node process per bank on 127.0.0.1.

    python scripts/consortium.py up --banks 4      create ./consortium (if new) and start every node
    python scripts/consortium.py up --insecure     the same, plaintext (debugging only)
    python scripts/consortium.py status            per node: up/down, view, primary, height, root
    python scripts/consortium.py kill BANK-B       SIGKILL one node (kill -9)
    python scripts/consortium.py restart BANK-B    start it again (kills it first if running)
    python scripts/consortium.py down              stop every node it started: SIGTERM, then SIGKILL
    python scripts/consortium.py demo              the lifecycle demo (scripts/demo.py) in --dir
    python scripts/consortium.py start BANK-B      start one node
    python scripts/consortium.py wipe BANK-B       stop it and delete its data directory (it rejoins
                                                   by replay when started; the vote record stays)
    python scripts/consortium.py backup BANK-B --out PATH     online, consistent copy of its store
    python scripts/consortium.py restore BANK-B --from PATH   put a backup back (node stopped)

A bank on its own host uses the two steps ``init`` runs for every bank (scripts/members.py):

    python scripts/consortium.py keygen BANK-X --dir D --host H --replica-port P --api-port Q --asset USD.BANK-X:2
        the bank's CA, node certificate, node and operator keys in D (secrets 0600), and
        D/BANK-X.public.json, the only file it hands the others
    python scripts/consortium.py genesis --dir D --chain-id C A.public.json B.public.json ...
        D/genesis.json from the members' public parts (replicas in the order given)

Every subcommand takes --dir PATH (default ./consortium). The directory layout, which the client
SDK, demo, chaos and bench scripts rely on:

    genesis.json                       chain id, f, members (keys, CA certificates, ports), assets
    consortium.json                    manifest: chain id, banks in replica order, tls
    banks/<BANK>/                      the bank's own folder, made by `keygen` (scripts/members.py):
        <BANK>.node.key, <BANK>.operator.key, <BANK>.ca.pem, <BANK>.ca-key.pem,
        <BANK>.tls.pem, <BANK>.tls-key.pem, <BANK>.public.json,
        <BANK>.monitor.pem, <BANK>.monitor-key.pem (the bank monitoring's client certificate: metrics)
    nodes/<BANK>/config.json           node config (node/config.py)
    nodes/<BANK>/data/                 LMDB environment
    nodes/<BANK>/data.votes.json       the vote record (node/votes.py): kept by wipe and restore
    nodes/<BANK>/events.log            JSON event lines of the node
    nodes/<BANK>/stderr.log            anything else the process printed
    nodes/<BANK>/node.pid              pid of the running process (removed when stopped)

Node ports are a block of consecutive ports chosen at random outside the kernel's ephemeral
range (/proc/sys/net/ipv4/ip_local_port_range), each free when chosen, so no outgoing connection
on the machine can be holding a stopped node's port when it restarts. If something else still
holds it, the node's error names the port and the holder (pid, command, socket state), and `up`
reports that node and leaves the others running (exit status 1).

Import ``Consortium`` from here to drive the same thing from tests and scripts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from members import BankFiles, assemble_genesis, keygen  # noqa: E402  (scripts/members.py)

from ledger import tls  # noqa: E402
from ledger.genesis import Genesis, GenesisError, Member, load_genesis  # noqa: E402
from ledger.pki import PkiError  # noqa: E402
from ledger.v1 import api_pb2, api_pb2_grpc  # noqa: E402
from node.backup import (  # noqa: E402
    BackupError,
    BackupInfo,
    check_backup,
    disk_bytes,
    restore_backup,
    take_backup,
)
from node.config import NodeConfig, NodeLimits, load_node_config  # noqa: E402
from node.storage.prune import Retention  # noqa: E402
from node.votes import VoteRecord, VoteRecordError  # noqa: E402

CURRENCIES: tuple[tuple[str, int], ...] = (("USD", 2), ("EUR", 2), ("GBP", 2), ("CHF", 2), ("JPY", 0))
HOST = "127.0.0.1"
UP_TIMEOUT_S = 30.0
EVENTS_TAIL_BYTES = 1 << 16  # how much of a node's events.log is read for its state sync events
STOP_GRACE_S = 5.0


class ConsortiumError(Exception):
    """A consortium command cannot be carried out; the message says why."""


def exit_cleanly_on_sigterm() -> None:
    """Make SIGTERM end the program like Ctrl-C (SystemExit through the finally blocks), so a
    script that started nodes stops them. Later SIGTERMs are ignored: a wrapper such as
    `timeout` forwards its own, which would otherwise cut that cleanup short."""

    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sys.exit(143)

    signal.signal(signal.SIGTERM, handler)


def bank_name(i: int) -> str:
    """BANK-A .. BANK-Z, then BANK-AA, BANK-AB, ..."""
    letters = ""
    i += 1
    while i:
        i, rem = divmod(i - 1, 26)
        letters = chr(65 + rem) + letters
    return f"BANK-{letters}"


# Node ports come from outside the kernel's ephemeral range (the local ports it gives outgoing
# connections): inside it, any connection on the machine could hold a stopped node's port, and
# its restart would fail with "Address already in use". Below PORT_MIN are well-known services.
PORT_MIN = 10_000
PORT_MAX = 65_535
EPHEMERAL_RANGE_PATH = Path("/proc/sys/net/ipv4/ip_local_port_range")
EPHEMERAL_DEFAULT = (32_768, 60_999)  # Linux's default, when the file cannot be read
PORT_BLOCK_TRIES = 100


def ephemeral_range(path: Path = EPHEMERAL_RANGE_PATH) -> tuple[int, int]:
    """(low, high) of the kernel's ephemeral port range, inclusive."""
    try:
        low, high = (int(x) for x in path.read_text().split())
    except (OSError, ValueError):
        return EPHEMERAL_DEFAULT
    return low, high


def _binds(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_ports(count: int, ephemeral: tuple[int, int] | None = None) -> list[int]:
    """A block of ``count`` consecutive TCP ports on 127.0.0.1 outside the ephemeral range,
    each free when chosen. The block starts at random in the larger room, below the range or
    above it: consortiums set up in parallel (tests) rarely pick the same one, and one that is
    taken is passed over."""
    low, high = ephemeral or ephemeral_range()
    rooms = [
        (start, end) for start, end in ((PORT_MIN, low - 1), (high + 1, PORT_MAX)) if end - start + 1 >= count
    ]
    if not rooms:
        raise ConsortiumError(
            f"no room for {count} ports outside the ephemeral range {low}-{high} ({EPHEMERAL_RANGE_PATH}) "
            f"within {PORT_MIN}-{PORT_MAX}"
        )
    start, end = max(rooms, key=lambda room: room[1] - room[0])
    rng = random.SystemRandom()
    for _ in range(PORT_BLOCK_TRIES):
        first = rng.randint(start, end - count + 1)
        block = list(range(first, first + count))
        if all(_binds(port) for port in block):
            return block
    raise ConsortiumError(
        f"no {count} free consecutive ports outside {low}-{high} after {PORT_BLOCK_TRIES} tries"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as dead.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


@dataclass(frozen=True)
class NodeInfo:
    bank: str
    replica: int
    pid: int | None
    up: bool  # the process is alive
    api_address: str
    replica_address: str
    status: api_pb2.NodeStatus | None  # None when it did not answer


class Consortium:
    """A consortium directory and the node processes started from it."""

    def __init__(
        self,
        directory: Path,
        python: str = sys.executable,
        launcher: Callable[[str], list[str]] | None = None,
    ) -> None:
        self.dir = directory.resolve()
        self.python = python
        # bank -> what to put before the node's command (scripts/netns.py: `ip netns exec NS`)
        self.launcher = launcher
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._insecure: bool | None = None

    # --- layout -------------------------------------------------------------------------

    @property
    def genesis_path(self) -> Path:
        return self.dir / "genesis.json"

    def node_dir(self, bank: str) -> Path:
        return self.dir / "nodes" / bank

    def config_path(self, bank: str) -> Path:
        return self.node_dir(bank) / "config.json"

    def pid_path(self, bank: str) -> Path:
        return self.node_dir(bank) / "node.pid"

    def bank_files(self, bank: str) -> BankFiles:
        return BankFiles(self.dir / "banks" / bank, bank)

    def operator_key_path(self, bank: str) -> Path:
        return self.bank_files(bank).operator_key

    def node_key_path(self, bank: str) -> Path:
        return self.bank_files(bank).node_key

    @property
    def insecure(self) -> bool:
        """The nodes run plaintext (``init --insecure``): clients must dial them so too."""
        if self._insecure is None:
            manifest = json.loads((self.dir / "consortium.json").read_text())
            self._insecure = not manifest.get("tls", True)
        return self._insecure

    def channel(self, endpoint: str, options: tls.ChannelOptions = ()) -> grpc.Channel:
        """A channel to one of the nodes' ports, TLS unless the consortium runs plaintext."""
        return tls.channel(self.genesis(), endpoint, options, insecure=self.insecure)

    def exists(self) -> bool:
        return self.genesis_path.exists()

    def genesis(self) -> Genesis:
        return load_genesis(self.genesis_path)

    def banks(self) -> list[str]:
        return [m.member_id for m in self.genesis().members]

    def node_limits(self, bank: str | None = None) -> NodeLimits:
        return load_node_config(self.config_path(bank or self.banks()[0])).limits

    def member(self, bank: str) -> Member:
        m = self.genesis().member(bank)
        if m is None:
            raise ConsortiumError(
                f"no bank {bank!r} in {self.genesis_path} (banks: {', '.join(self.banks())})"
            )
        return m

    # --- init ---------------------------------------------------------------------------

    def init(
        self,
        banks: int,
        chain_id: str | None = None,
        limits: dict[str, int] | None = None,
        insecure: bool = False,
        hosts: Sequence[str] | None = None,
    ) -> Genesis:
        """Write genesis, keys and node configs for ``banks`` banks; refuse an existing dir.
        Each bank's secrets are made in its own folder by the same ``keygen`` a bank on its
        own host runs, and genesis is assembled from their public parts alone. ``hosts``: each
        bank's address (default 127.0.0.1 for all), in genesis, its certificate and its
        listening addresses (scripts/netns.py gives each node its own)."""
        if banks < 4:
            raise ConsortiumError(f"--banks must be >= 4 (n = 3f+1 with f >= 1), got {banks}")
        if self.exists():
            raise ConsortiumError(f"{self.dir} already holds a consortium ({self.genesis_path})")
        f = (banks - 1) // 3
        n = banks
        if n != 3 * f + 1:  # genesis requires n = 3f+1 exactly
            raise ConsortiumError(f"--banks must be 3f+1 (4, 7, 10, ...), got {banks}")
        # A block's fixed cost grows with n at every node (votes and attestations from every
        # peer), so the primary should wait proportionally longer to fill one: NodeLimits'
        # default suits 4 members (7 banks at open 400 tx/s, one run each: 100 us gave p50 163
        # ms, p99 1,093 ms; 175 us gave 127 ms, 391 ms and 15% less CPU per transaction).
        per_tps = {"batch_delay_per_tps_us": NodeLimits().batch_delay_per_tps_us * n // 4}
        node_limits = NodeLimits(**(per_tps | (limits or {})))
        chain_id = chain_id or f"local-{secrets.token_hex(4)}"
        ports = free_ports(3 * n)  # replica and API ports in genesis, then the metrics ports
        if hosts is not None and len(hosts) != n:
            raise ConsortiumError(f"{len(hosts)} hosts for {n} banks")
        host_of = list(hosts or [HOST] * n)
        publics: list[Path] = []
        for i in range(n):
            bank = bank_name(i)
            ccy, scale = CURRENCIES[i % len(CURRENCIES)]
            publics.append(
                keygen(
                    self.bank_files(bank),
                    host_of[i],
                    ports[2 * i],
                    ports[2 * i + 1],
                    [(f"{ccy}.{bank}", scale)],
                )
            )
        genesis = assemble_genesis(chain_id, publics)
        for m in genesis.members:
            files = self.bank_files(m.member_id)
            node_dir = self.node_dir(m.member_id)
            (node_dir / "data").mkdir(parents=True, exist_ok=True)
            config = NodeConfig(
                genesis_path=self.genesis_path,
                member_id=m.member_id,
                key_path=files.node_key,
                data_dir=node_dir / "data",
                api_listen=m.api_address,
                replica_listen=m.replica_address,
                log_path=node_dir / "events.log",
                limits=node_limits,
                tls=not insecure,
                tls_cert_path=files.tls_cert,
                tls_key_path=files.tls_key,
                metrics_listen=f"{host_of[m.replica]}:{ports[2 * n + m.replica]}",
            )
            self.config_path(m.member_id).write_text(config.to_json())
        manifest = {
            "chain_id": chain_id,
            "banks": [m.member_id for m in genesis.members],
            "f": f,
            "tls": not insecure,
        }
        (self.dir / "consortium.json").write_text(json.dumps(manifest, indent=2) + "\n")
        self._insecure = insecure
        # genesis last: its presence is what marks the directory as initialized
        self.genesis_path.write_text(genesis.to_json())
        return genesis

    # --- processes ----------------------------------------------------------------------

    def pid(self, bank: str) -> int | None:
        """The pid of bank's running node, or None (a stale pid file is removed)."""
        proc = self._procs.get(bank)
        if proc is not None:
            if proc.poll() is None:
                return proc.pid  # our own child: poll() is exact (and it may not have exec'd yet)
            del self._procs[bank]
        path = self.pid_path(bank)
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            return None
        if _pid_alive(pid) and self._is_our_node(pid, bank):
            return pid
        path.unlink(missing_ok=True)
        return None

    def _is_our_node(self, pid: int, bank: str) -> bool:
        """The pid still runs this bank's node (not a recycled pid of something else)."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return sys.platform != "linux"  # no /proc to ask: trust the pid file
        return str(self.config_path(bank)).encode() in cmdline

    def start(self, bank: str) -> int:
        self.member(bank)
        if self.pid(bank) is not None:
            raise ConsortiumError(f"{bank} is already running (pid {self.pid(bank)})")
        node_dir = self.node_dir(bank)
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        with (node_dir / "stderr.log").open("ab") as err:
            proc = subprocess.Popen(
                [
                    *(self.launcher(bank) if self.launcher else []),
                    *(self.python, "-m", "node", "--config", str(self.config_path(bank))),
                ],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,  # own process group: a ^C on the script does not hit it
            )
        self._procs[bank] = proc
        self.pid_path(bank).write_text(f"{proc.pid}\n")
        return proc.pid

    def health(self, bank: str, timeout_s: float = 1.0) -> bool:
        m = self.member(bank)
        with self.channel(m.api_address) as channel:
            try:
                resp = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=timeout_s
                )
            except grpc.RpcError:
                return False
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    def wait_healthy(
        self, banks: list[str], timeout_s: float = UP_TIMEOUT_S, progress: Callable[[str], None] | None = None
    ) -> None:
        """Return when every bank answers SERVING; raise if one exits or the bound passes."""
        failed = self._wait_started(banks, timeout_s, progress)
        if failed:
            raise ConsortiumError("\n".join(failed.values()))

    def state_sync_event(self, bank: str) -> dict[str, Any] | None:
        """The bank's latest state sync event (node/statesync.py) in the tail of its events.log."""
        path = self.node_dir(bank) / "events.log"
        try:
            with path.open("rb") as f:
                f.seek(max(0, path.stat().st_size - EVENTS_TAIL_BYTES))
                lines = f.read().splitlines()
        except OSError:
            return None
        for line in reversed(lines):
            if b'"event":"state_sync' in line:  # state_sync_* and state_synced
                with contextlib.suppress(ValueError):
                    event: dict[str, Any] = json.loads(line)
                    return event
        return None

    def _wait_started(
        self, banks: list[str], timeout_s: float, progress: Callable[[str], None] | None = None
    ) -> dict[str, str]:
        """Wait until each bank answers SERVING or exits, at most timeout_s, plus the time a node
        spends syncing by snapshot (it serves nothing meanwhile; ``progress`` is told its
        progress events); the ones that did not come up, with why (a node that exits says why
        on stderr: its tail is quoted)."""
        deadline = time.monotonic() + timeout_s
        waiting = list(banks)
        failed: dict[str, str] = {}
        told: dict[str, object] = {}
        while waiting:
            for bank in list(waiting):
                if self.pid(bank) is None:
                    failed[bank] = f"{bank} exited during start-up:\n{self._stderr_tail(bank)}"
                    waiting.remove(bank)
                elif self.health(bank, timeout_s=0.5):
                    waiting.remove(bank)
                elif (event := self.state_sync_event(bank)) is not None and event["event"] in (
                    "state_sync_started",
                    "state_sync_progress",
                ):
                    deadline = max(deadline, time.monotonic() + timeout_s)  # syncing: not stuck
                    if progress is not None and told.get(bank) != event["ts_ms"]:
                        told[bank] = event["ts_ms"]
                        progress(_sync_line(bank, event))
            if waiting and time.monotonic() > deadline:
                for bank in waiting:
                    failed[bank] = f"{bank} not healthy after {timeout_s:.0f}s"
                break
            if waiting:
                time.sleep(0.05)  # polling a remote health endpoint: there is no event to await
        return failed

    def _stderr_tail(self, bank: str, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            text = (self.node_dir(bank) / "stderr.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return "(no stderr.log)"

    def up(
        self,
        banks: int = 4,
        timeout_s: float = UP_TIMEOUT_S,
        limits: dict[str, int] | None = None,
        insecure: bool = False,
        hosts: Sequence[str] | None = None,
    ) -> list[str]:
        """Create the consortium if needed and start every node that is not running.
        Returns the banks started; raises ConsortiumError if all were already running, or if
        a node does not come up (it cannot listen, say): that error names each one and why,
        and the others are left running (restart the failed one, or stop all with down)."""
        if not self.exists():
            self.init(banks, limits=limits, insecure=insecure, hosts=hosts)
        all_banks = self.banks()
        to_start = [b for b in all_banks if self.pid(b) is None]
        if not to_start:
            raise ConsortiumError(f"consortium in {self.dir} is already up ({len(all_banks)} nodes running)")
        try:
            for bank in to_start:
                self.start(bank)
            failed = self._wait_started(to_start, timeout_s)
        except BaseException:  # interrupted (^C, SIGTERM): stop what this call started
            for bank in to_start:
                if self.pid(bank) is not None:
                    self.stop(bank)
            raise
        if failed:
            running = [b for b in all_banks if self.pid(b) is not None]
            raise ConsortiumError(
                "\n".join(failed.values())
                + f"\n{len(failed)} node(s) did not come up; left running: {', '.join(running) or 'none'}"
            )
        return to_start

    def kill(self, bank: str) -> int:
        """SIGKILL (kill -9) one node; returns its pid."""
        self.member(bank)
        pid = self.pid(bank)
        if pid is None:
            raise ConsortiumError(f"{bank} is not running")
        os.kill(pid, signal.SIGKILL)
        self._reap(bank, pid, STOP_GRACE_S)
        return pid

    def restart(self, bank: str, timeout_s: float = UP_TIMEOUT_S) -> int:
        if self.pid(bank) is not None:
            self.kill(bank)
        pid = self.start(bank)
        self.wait_healthy([bank], timeout_s)
        return pid

    def stop(self, bank: str, grace_s: float = STOP_GRACE_S) -> str:
        """SIGTERM, then SIGKILL past grace_s. Returns what happened, for the report."""
        self.member(bank)
        pid = self.pid(bank)
        if pid is None:
            return f"{bank}: not running"
        os.kill(pid, signal.SIGTERM)
        if self._reap(bank, pid, grace_s):
            return f"{bank}: pid {pid} stopped (SIGTERM)"
        os.kill(pid, signal.SIGKILL)
        self._reap(bank, pid, grace_s)
        return f"{bank}: pid {pid} killed (SIGKILL after {grace_s:.0f}s)"

    def _reap(self, bank: str, pid: int, timeout_s: float) -> bool:
        """Wait until pid is gone; True if it went within timeout_s."""
        proc = self._procs.get(bank)
        if proc is not None and proc.pid == pid:
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                return False
        else:
            deadline = time.monotonic() + timeout_s
            while _pid_alive(pid):  # not our child: poll its liveness
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.02)
        self._procs.pop(bank, None)
        self.pid_path(bank).unlink(missing_ok=True)
        return True

    def down(self) -> list[str]:
        """Stop every running node; one report line each. Empty when nothing was running."""
        if not self.exists():
            return []
        return [self.stop(b) for b in self.banks() if self.pid(b) is not None]

    # --- queries ------------------------------------------------------------------------

    def ledger_channel(self, bank: str) -> grpc.Channel:
        return self.channel(self.member(bank).api_address)

    def node_status(self, bank: str, timeout_s: float = 1.0) -> api_pb2.NodeStatus | None:
        with self.ledger_channel(bank) as channel:
            try:
                return api_pb2_grpc.LedgerServiceStub(channel).GetStatus(
                    api_pb2.GetStatusRequest(), timeout=timeout_s
                )
            except grpc.RpcError:
                return None

    def metrics_url(self, bank: str) -> str | None:
        """Where the node serves Prometheus metrics (its config's metrics_listen), or None."""
        config = self.node_config(bank)
        if config.metrics_listen is None:
            return None
        return f"{'https' if config.tls else 'http'}://{config.metrics_listen}/metrics"

    def metrics_tls(self, bank: str) -> ssl.SSLContext | None:
        """How the bank's monitoring scrapes its node's metrics: it trusts the bank's CA and
        shows the bank's monitoring certificate (None: the consortium runs plaintext)."""
        if self.insecure:
            return None
        files = self.bank_files(bank)
        ctx = ssl.create_default_context(cafile=str(files.ca_cert))
        ctx.load_cert_chain(str(files.monitor_cert), str(files.monitor_key))
        return ctx

    def scrape(self, bank: str, timeout_s: float = 5.0) -> str:
        """The node's /metrics text, read as the bank's monitoring does."""
        url = self.metrics_url(bank)
        if url is None:
            raise ValueError(f"{bank}: no metrics_listen in its config")
        with urllib.request.urlopen(url, timeout=timeout_s, context=self.metrics_tls(bank)) as resp:
            return str(resp.read().decode())

    def node_config(self, bank: str) -> NodeConfig:
        return load_node_config(self.config_path(bank))

    # --- retention, backup, restore, wipe (issue 18) --------------------------------------

    def set_retention(self, retention: Retention, bank: str | None = None) -> None:
        """Write a retention policy into one bank's node config (every bank's without ``bank``);
        it takes effect when the node (re)starts."""
        for b in [bank] if bank else self.banks():
            config = replace(self.node_config(b), retention=retention)
            self.config_path(b).write_text(config.to_json())

    def backup(self, bank: str, out: Path) -> BackupInfo:
        """An online, consistent, compacted copy of the bank's store (running or not)."""
        self.member(bank)
        try:
            return take_backup(self.node_config(bank).data_dir, out, bank, self.genesis().chain_id)
        except BackupError as exc:
            raise ConsortiumError(str(exc)) from exc

    def restore(self, bank: str, source: Path, floor_from_peers: bool = False) -> BackupInfo:
        """Put a backup back as the (stopped) bank's store. Its vote record must be there (it
        is what keeps the restored node from voting against its own votes since the backup);
        on a new host without it, ``floor_from_peers`` writes one from the others' status."""
        self.member(bank)
        if self.pid(bank) is not None:
            raise ConsortiumError(f"{bank} is running (pid {self.pid(bank)}): stop it first")
        config = self.node_config(bank)
        try:
            check_backup(source, bank, self.genesis().chain_id)
        except BackupError as exc:
            raise ConsortiumError(str(exc)) from exc
        if floor_from_peers:
            self._vote_record_from_peers(bank, config)
        elif not config.votes_path.exists():
            raise ConsortiumError(
                f"no vote record at {config.votes_path}: the node may have voted after this backup was "
                "taken and would not know it. Copy the record from the node's old host, or pass "
                "--vote-floor-from-peers to derive one from the other nodes (f+1 must answer)"
            )
        try:
            return restore_backup(source, config.data_dir, bank, self.genesis().chain_id)
        except BackupError as exc:
            raise ConsortiumError(str(exc)) from exc

    def _vote_record_from_peers(self, bank: str, config: NodeConfig) -> None:
        """A record above anything the node could have voted, from the other nodes' status: a
        view above the highest they report (a replica is at most one view ahead of a quorum), a
        sequence two windows past the highest stable checkpoint. Unsigned answers: a liar can
        only raise it, which makes the node abstain longer."""
        genesis = self.genesis()
        answers = [st for b in self.banks() if b != bank and (st := self.node_status(b)) is not None]
        if len(answers) < genesis.f + 1:
            raise ConsortiumError(f"only {len(answers)} other nodes answered; need f+1 = {genesis.f + 1}")
        window = config.limits.log_window
        try:
            old = VoteRecord.load(config.votes_path)
        except VoteRecordError:
            old = VoteRecord()
        VoteRecord(
            max(old.view, max(st.view for st in answers) + 1),
            max(old.sequence, max(st.stable_checkpoint for st in answers) + 2 * window),
        ).save(config.votes_path)

    def wipe(self, bank: str) -> str:
        """Stop the bank's node and delete its data directory; the vote record stays, so the
        node abstains from voting when it comes back until it has caught up past it."""
        report = self.stop(bank)
        data_dir = self.node_config(bank).data_dir
        shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir(parents=True)
        return f"{report}; {data_dir} wiped"

    def status_records(self) -> list[dict[str, object]]:
        """`status --json`: per node, what an operator or a script checks (null when down)."""
        out: list[dict[str, object]] = []
        for info in self.status():
            st = info.status
            out.append(
                {
                    "bank": info.bank,
                    "pid": info.pid,
                    "up": st is not None,
                    "api_address": info.api_address,
                    "metrics_url": self.metrics_url(info.bank),
                    "view": None if st is None else st.view,
                    "primary": None if st is None else st.primary,
                    "in_view_change": None if st is None else st.in_view_change,
                    "height": None if st is None else st.last_executed,
                    "state_root": None if st is None else st.state_root.hex(),
                    "stable_checkpoint": None if st is None else st.stable_checkpoint,
                    # What the store's files take on disk now (also when the node is down).
                    "disk_bytes": disk_bytes(self.node_config(info.bank).data_dir),
                    "disk_used_bytes": None if st is None else st.counters["disk_used_bytes"],
                    "first_block": None if st is None else st.counters["first_block"],
                    # The snapshot this node's store started from (state sync), 0 if none.
                    "synced_at": None if st is None else st.counters["synced_at"],
                    "abstaining": None if st is None else bool(st.counters["replica_abstaining"]),
                    # Catch-up refused by peers that pruned the blocks: needs state sync.
                    "fetch_pruned": None if st is None else st.counters["fetch_pruned"],
                    "disk_budget_bytes": None if st is None else st.counters["disk_budget_bytes"],
                    "peers_up": None if st is None else sum(p.up for p in st.peers),
                }
            )
        return out

    def status(self) -> list[NodeInfo]:
        out = []
        for m in self.genesis().members:
            pid = self.pid(m.member_id)
            st = self.node_status(m.member_id) if pid is not None else None
            out.append(
                NodeInfo(m.member_id, m.replica, pid, pid is not None, m.api_address, m.replica_address, st)
            )
        return out


def _sync_line(bank: str, event: dict[str, Any]) -> str:
    if event["event"] == "state_sync_started":
        return f"{bank}: syncing by snapshot at checkpoint {event['sequence']} from peers {event['peers']}"
    return (
        f"{bank}: state sync: {event['part']}: {event['nodes']} nodes, {event['leaves']} leaves, "
        f"{event['results']} results, {event['bytes']} bytes"
    )


# --- command line ---------------------------------------------------------------------------


def _print_endpoints(c: Consortium) -> None:
    g = c.genesis()
    print(f"consortium {g.chain_id} in {c.dir}: n={g.n} f={g.f}")
    print(f"{'bank':<10} {'replica':>7} {'pid':>8}  {'api':<21} {'replica port':<21} asset")
    for m in g.members:
        pid = c.pid(m.member_id)
        print(
            f"{m.member_id:<10} {m.replica:>7} {pid or '-':>8}  {m.api_address:<21} {m.replica_address:<21} "
            f"{','.join(m.assets)}"
        )
    print(f"operator keys: {c.dir / 'banks'}/<BANK>/<BANK>.operator.key")
    if c.insecure:
        print("plaintext (--insecure): for debugging only")


def _print_status(c: Consortium) -> None:
    print(
        f"{'bank':<10} {'pid':>8} {'state':<5} {'view':>5} {'primary':>7} {'height':>7} {'stable':>7} "
        f"{'peers':>5}  {'state root':<16}  metrics"
    )
    for info in c.status():
        st = info.status
        if st is None:
            state = "up?" if info.up else "down"
            print(f"{info.bank:<10} {info.pid or '-':>8} {state:<5}")
            continue
        print(
            f"{info.bank:<10} {info.pid or '-':>8} {'up':<5} {st.view:>5} {st.primary:>7} {st.last_executed:>7} "
            f"{st.stable_checkpoint:>7} {sum(p.up for p in st.peers):>3}/{len(st.peers)}  {st.state_root.hex()[:16]}  "
            f"{c.metrics_url(info.bank) or '-'}"
        )


def _bank_step(args: argparse.Namespace) -> int:
    """``keygen`` (in a bank's own folder) and ``genesis`` (from public parts only)."""
    try:
        if args.command == "keygen":
            assets = []
            for spec in args.asset:
                name, sep, scale = spec.rpartition(":")
                if not sep or not scale.isdigit():
                    raise ConsortiumError(f"--asset {spec!r}: expected CCY.{args.bank}:SCALE")
                assets.append((name, int(scale)))
            public = keygen(
                BankFiles(args.dir, args.bank), args.host, args.replica_port, args.api_port, assets
            )
            print(f"{args.bank}: keys and certificates in {args.dir}; hand the others only {public}")
        else:
            path = args.dir / "genesis.json"
            if path.exists():
                raise ConsortiumError(f"{path} already exists")
            genesis = assemble_genesis(args.chain_id or f"chain-{secrets.token_hex(4)}", args.public)
            args.dir.mkdir(parents=True, exist_ok=True)
            path.write_text(genesis.to_json())
            print(f"{path}: chain {genesis.chain_id}, n={genesis.n} f={genesis.f}")
    except (ConsortiumError, GenesisError, PkiError, OSError) as exc:
        print(f"consortium: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, default=Path("consortium"), help="consortium directory")
    sub = parser.add_subparsers(dest="command", required=True)
    p_init = sub.add_parser("init", help="write genesis, keys and configs without starting nodes")
    p_init.add_argument("--banks", type=int, default=4)
    p_up = sub.add_parser("up", help="create (if new) and start every node")
    p_up.add_argument("--banks", type=int, default=4)
    p_up.add_argument("--timeout", type=float, default=UP_TIMEOUT_S)
    for p in (p_init, p_up):
        p.add_argument("--insecure", action="store_true", help="plaintext nodes, for debugging only")
    p_keygen = sub.add_parser(
        "keygen", help="one bank: its CA, node certificate and keys in --dir, and its public part"
    )
    p_keygen.add_argument("bank", help="member id, e.g. BANK-X")
    p_keygen.add_argument("--host", default=HOST, help="the node's address as peers reach it")
    p_keygen.add_argument("--replica-port", type=int, required=True)
    p_keygen.add_argument("--api-port", type=int, required=True)
    p_keygen.add_argument("--asset", action="append", default=[], help="CCY.BANK-X:SCALE, repeatable")
    p_genesis = sub.add_parser("genesis", help="--dir/genesis.json from the banks' <BANK>.public.json files")
    p_genesis.add_argument("--chain-id", default=None)
    p_genesis.add_argument("public", nargs="+", type=Path, help="public parts, in replica order")
    p_status = sub.add_parser("status", help="each node's view, height, state root, disk and metrics URL")
    p_status.add_argument("--json", action="store_true", help="one JSON object per node, a line each")
    for name in ("kill", "restart", "start", "stop", "wipe"):
        sub.add_parser(name).add_argument("bank")
    p_backup = sub.add_parser("backup", help="online, consistent, compacted copy of one node's store")
    p_backup.add_argument("bank")
    p_backup.add_argument("--out", type=Path, required=True, help="a new (or empty) folder")
    p_restore = sub.add_parser("restore", help="put a backup back as a stopped node's store")
    p_restore.add_argument("bank")
    p_restore.add_argument("--from", dest="source", type=Path, required=True, help="a backup folder")
    p_restore.add_argument(
        "--vote-floor-from-peers",
        action="store_true",
        help="no vote record on this host: derive one from the other nodes' status",
    )
    sub.add_parser("down")
    sub.add_parser(
        "demo", help="start a consortium in --dir and run the demo (scripts/demo.py)"
    ).add_argument("--insecure", action="store_true", help="plaintext nodes (debugging only)")
    for p in sub.choices.values():  # --dir also after the subcommand: `consortium.py up --dir X`
        p.add_argument("--dir", type=Path, default=argparse.SUPPRESS, help="consortium directory")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from demo import run_demo  # scripts/demo.py; imported late, it imports this module

        return run_demo(args.dir, args.insecure)
    if args.command in ("keygen", "genesis"):
        return _bank_step(args)
    c = Consortium(args.dir)
    try:
        if args.command == "init":
            c.init(args.banks, insecure=args.insecure)
            _print_endpoints(c)
        elif args.command == "up":
            if c.exists() and args.banks != len(c.banks()):
                print(f"note: {c.dir} already has {len(c.banks())} banks; --banks {args.banks} ignored")
            started = c.up(args.banks, timeout_s=args.timeout, insecure=args.insecure)
            print(f"started {len(started)} node(s), all healthy")
            _print_endpoints(c)
        elif not c.exists():
            raise ConsortiumError(f"no consortium in {c.dir} (run: consortium.py --dir {args.dir} up)")
        elif args.command == "status" and args.json:
            for record in c.status_records():
                print(json.dumps(record, sort_keys=True))
        elif args.command == "status":
            _print_status(c)
        elif args.command == "kill":
            print(f"{args.bank}: pid {c.kill(args.bank)} killed (SIGKILL)")
        elif args.command == "restart":
            print(f"{args.bank}: restarted, pid {c.restart(args.bank)}, healthy")
        elif args.command == "start":
            pid = c.start(args.bank)
            c.wait_healthy([args.bank], progress=lambda line: print(line, flush=True))
            synced = c.state_sync_event(args.bank)
            how = ""
            if synced is not None and synced["event"] == "state_synced":
                how = f" (synced by snapshot at checkpoint {synced['sequence']} in {synced['seconds']}s)"
            print(f"{args.bank}: started, pid {pid}, healthy{how}")
        elif args.command == "stop":
            print(c.stop(args.bank))
        elif args.command == "wipe":
            print(c.wipe(args.bank))
        elif args.command == "backup":
            info = c.backup(args.bank, args.out)
            print(
                f"{args.bank}: backup at height {info.height} in {args.out}: {info.bytes} bytes, "
                f"{info.seconds:.2f}s"
            )
        elif args.command == "restore":
            info = c.restore(args.bank, args.source, args.vote_floor_from_peers)
            print(
                f"{args.bank}: restored to height {info.height} from {args.source}; start it with "
                f"`consortium.py start {args.bank}` (it abstains from voting until caught up)"
            )
        elif args.command == "down":
            lines = c.down()
            if not lines:
                print(f"nothing running in {c.dir}")
            for line in lines:
                print(line)
    except ConsortiumError as exc:
        print(f"consortium: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
