"""Who holds a TCP port: for the error of a node that cannot listen (issue 21).

Best effort, Linux only: the sockets on the port come from /proc/net/tcp and tcp6 (their
inodes), and their owners from the /proc/<pid>/fd links to those inodes. Processes of other
users cannot be looked into; their sockets are still counted.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}
CMDLINE_CHARS_MAX = 120


def _sockets_on(port: int, proc: Path) -> dict[str, str]:
    """inode -> TCP state of every socket whose local port is ``port`` (inode "0": TIME_WAIT)."""
    out: dict[str, str] = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or not fields[1].endswith(f":{port:04X}"):
                continue
            out.setdefault(fields[9], TCP_STATES.get(fields[3], fields[3]))
    return out


def _owners(inodes: set[str], proc: Path) -> dict[str, list[int]]:
    """inode -> pids holding it (those whose fds this process may read)."""
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    out: dict[str, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                inode = wanted.get(os.readlink(fd))
            except OSError:
                continue
            if inode is not None and int(entry.name) not in out.setdefault(inode, []):
                out[inode].append(int(entry.name))
    return out


def _command(pid: int, proc: Path) -> str:
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return "?"
    text = raw.replace(b"\0", b" ").decode(errors="replace").strip() or "?"
    return text if len(text) <= CMDLINE_CHARS_MAX else text[: CMDLINE_CHARS_MAX - 3] + "..."


def port_holders(port: int, proc: Path = PROC) -> str:
    """Who holds ``port``, for a person: "pid 123 (python -m x) ESTABLISHED; ..." or why not known."""
    sockets = _sockets_on(port, proc)
    if not sockets:
        return "no socket on it is listed in /proc/net/tcp (it may have been released since)"
    owners = _owners({inode for inode in sockets if inode != "0"}, proc)
    parts: list[str] = []
    for inode, state in sorted(sockets.items()):
        pids = owners.get(inode, [])
        if pids:
            parts += [f"pid {pid} ({_command(pid, proc)}) {state}" for pid in pids]
        elif inode == "0":
            parts.append(f"a closed connection in {state}")
        else:
            parts.append(f"a {state} socket of a process this user cannot see")
    return "; ".join(parts)
