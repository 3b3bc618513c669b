#!/usr/bin/env python3
"""Hosts for the nodes on one machine: a Linux network namespace per node on a bridge (issue 17,
item 5), and the network faults chaos plays on them.

Each node gets a namespace with its own IP on a /24, joined to a bridge by a veth pair (one end
in the namespace, the other a bridge port). The bridge has the subnet's first address, so a
process in the root namespace (the chaos load clients, the audit, the health checks) reaches
every node as a host on the same switch would: the root namespace is the clients' network,
and a fault between members (a partition) leaves it alone, as a split between banks' data
centres leaves each bank's clients reaching their bank. A node runs under
``ip netns exec NAME`` (which execs in place: the pid is the node's, so kill and SIGSTOP work as
on 127.0.0.1).

Faults, each undone by its heal:

    isolate(i)         the node's bridge port down: nothing in or out, clients included
    partition(a, b)    blackhole routes in every namespace of one group to every address of the
                       other: members of a and b cannot reach each other; clients reach both
    slow(i)            the node's link, both directions: ``tc netem`` delay with jitter and loss
                       where the kernel has sch_netem, else ``tc tbf`` rate limiting (a slow link
                       whose queue overflows: loss too); ``slow_link_mechanism`` says which

Names are unique per run (``cln<pid>``: namespaces cln<pid>-<i>, bridge cln<pid>br, veths
cln<pid>h<i> / cln<pid>n<i>) and the subnet is a 10.x.y.0/24 no route of the machine covers.
Everything made is removed by ``close()``: on leaving the ``with`` block (an exception, ^C or
SystemExit from SIGTERM included), at interpreter exit (atexit) otherwise, and, for a run killed
by SIGKILL, by the next harness, which removes what names a dead pid (``sweep_stale``).
Processes still running in one of our namespaces at close are killed by pid (they can only be
nodes this run started). Needs root and iproute2 (``ip``, ``tc``); no iptables.

    python scripts/netns.py check      can this machine run it: namespaces, bridge, netem, tbf
    python scripts/netns.py sweep      remove what a killed run left behind
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

PREFIX = "cln"  # consortium ledger netns
NETEM = "netem delay 80ms 40ms loss 5%"
TBF = "tbf rate 400kbit burst 16kb latency 200ms"
SUBNET_BASE = ipaddress.ip_network("10.0.0.0/8")
_NAME = re.compile(rf"^{PREFIX}(\d+)(?:-\d+|br|[hn]\d+)$")


class NetnsError(Exception):
    """The namespaces cannot be made or changed; the message says which command failed and why."""


def ip_cmd(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ip/tc (args[0]) with the rest; raise NetnsError with its stderr when check fails."""
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=20)
    if check and proc.returncode != 0:
        raise NetnsError(f"`{' '.join(args)}` failed: {proc.stderr.strip() or proc.returncode}")
    return proc


def unavailable() -> str | None:
    """Why namespaces cannot be made here (not root, no iproute2), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"no `{tool}` (install iproute2)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = ip_cmd("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` fails: {made.stderr.strip()}"
    ip_cmd("ip", "netns", "del", probe, check=False)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> list[str]:
    out = ip_cmd("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _links() -> list[str]:
    out = ip_cmd("ip", "-o", "link", "show", check=False).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


def _pid_of(name: str) -> int | None:
    m = _NAME.match(name)
    return int(m.group(1)) if m else None


def _kill_inside(ns: str) -> None:
    """SIGKILL, by pid, what still runs in our namespace (nodes of this run)."""
    out = ip_cmd("ip", "netns", "pids", ns, check=False).stdout
    for word in out.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(word), signal.SIGKILL)


def sweep_stale() -> list[str]:
    """Remove namespaces and links a harness of a dead process left (killed by SIGKILL)."""
    removed = []
    for ns in _namespaces():
        pid = _pid_of(ns)
        if pid is not None and not _alive(pid):
            _kill_inside(ns)
            ip_cmd("ip", "netns", "del", ns, check=False)
            removed.append(ns)
    for link in _links():
        pid = _pid_of(link)
        if pid is not None and not _alive(pid):
            ip_cmd("ip", "link", "del", link, check=False)
            removed.append(link)
    return removed


def free_subnet(seed: int, routes: Sequence[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """A 10.x.y.0/24 (x.y from seed, then the next ones) overlapping none of routes."""
    subnets = 1 << 16
    for k in range(subnets):
        index = (seed + k) % subnets
        if index == 0:
            continue
        net = ipaddress.ip_network(f"10.{index >> 8}.{index & 0xFF}.0/24")
        assert isinstance(net, ipaddress.IPv4Network)
        if not any(net.overlaps(r) for r in routes):
            return net
    raise NetnsError("no free 10.x.y.0/24 for the bridge")


def _routes() -> list[ipaddress.IPv4Network]:
    """Every IPv4 destination the root namespace routes or holds (but the default route)."""
    nets: list[ipaddress.IPv4Network] = []
    for cmd in (("ip", "-4", "route", "show", "table", "all"), ("ip", "-4", "-o", "addr", "show")):
        for line in ip_cmd(*cmd, check=False).stdout.splitlines():
            for word in line.split():
                with contextlib.suppress(ValueError):
                    if "/" in word or word.count(".") == 3:
                        net = ipaddress.ip_network(word, strict=False)
                        if isinstance(net, ipaddress.IPv4Network) and net.prefixlen > 0:
                            nets.append(net)
    return nets


@dataclass
class Netns:
    """``count`` namespaces on a bridge; see the module docstring. Use as a context manager."""

    count: int
    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}")
    subnet: ipaddress.IPv4Network | None = None
    slow_link_mechanism: str | None = None  # "netem ...", "tbf ...", or None when neither works
    netem_missing: str | None = None  # why sch_netem cannot be used, when it cannot
    _made_ns: list[str] = field(default_factory=list)
    _made_links: list[str] = field(default_factory=list)
    _blackholes: list[tuple[str, str]] = field(default_factory=list)  # (namespace, address)
    _down: set[int] = field(default_factory=set)
    _slowed: set[int] = field(default_factory=set)
    _closed: bool = False

    # --- names ----------------------------------------------------------------------------

    @property
    def bridge(self) -> str:
        return f"{self.tag}br"

    def ns(self, i: int) -> str:
        return f"{self.tag}-{i}"

    def host_veth(self, i: int) -> str:
        return f"{self.tag}h{i}"

    def node_veth(self, i: int) -> str:
        return f"{self.tag}n{i}"

    def address(self, i: int) -> str:
        """Node i's IP (the bridge has the subnet's first address)."""
        assert self.subnet is not None
        return str(self.subnet.network_address + 2 + i)

    @property
    def gateway(self) -> str:
        assert self.subnet is not None
        return str(self.subnet.network_address + 1)

    def exec_prefix(self, i: int) -> list[str]:
        """Prefix a command with this to run it in node i's namespace (same pid: exec)."""
        return ["ip", "netns", "exec", self.ns(i)]

    # --- life -----------------------------------------------------------------------------

    def __enter__(self) -> Netns:
        self.open()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> None:
        why = unavailable()
        if why is not None:
            raise NetnsError(why)
        sweep_stale()
        atexit.register(self.close)
        try:
            self.subnet = free_subnet(os.getpid(), _routes())
            prefix = self.subnet.prefixlen
            ip_cmd("ip", "link", "add", self.bridge, "type", "bridge")
            self._made_links.append(self.bridge)
            ip_cmd("ip", "addr", "add", f"{self.gateway}/{prefix}", "dev", self.bridge)
            ip_cmd("ip", "link", "set", self.bridge, "up")
            for i in range(self.count):
                ns, host, node = self.ns(i), self.host_veth(i), self.node_veth(i)
                ip_cmd("ip", "netns", "add", ns)
                self._made_ns.append(ns)
                ip_cmd("ip", "link", "add", host, "type", "veth", "peer", "name", node, "netns", ns)
                self._made_links.append(host)
                ip_cmd("ip", "link", "set", host, "master", self.bridge)
                ip_cmd("ip", "link", "set", host, "up")
                ip_cmd("ip", "-n", ns, "addr", "add", f"{self.address(i)}/{prefix}", "dev", node)
                ip_cmd("ip", "-n", ns, "link", "set", node, "up")
                ip_cmd("ip", "-n", ns, "link", "set", "lo", "up")
            self._probe_qdiscs()
        except BaseException:
            self.close()
            raise

    def _probe_qdiscs(self) -> None:
        """Which slow-link qdisc this kernel has: netem, else tbf, else none (tried on host veth 0)."""
        dev = self.host_veth(0)
        tried = ip_cmd("tc", "qdisc", "add", "dev", dev, "root", *NETEM.split(), check=False)
        if tried.returncode == 0:
            self.slow_link_mechanism = NETEM
        else:
            self.netem_missing = f"kernel lacks sch_netem ({tried.stderr.strip()})"
            if ip_cmd("tc", "qdisc", "add", "dev", dev, "root", *TBF.split(), check=False).returncode == 0:
                self.slow_link_mechanism = TBF
        ip_cmd("tc", "qdisc", "del", "dev", dev, "root", check=False)

    def close(self) -> None:
        """Remove everything this harness made (idempotent; errors of one step do not stop the
        others)."""
        if self._closed:
            return
        self._closed = True
        for ns in self._made_ns:
            _kill_inside(ns)
            ip_cmd("ip", "netns", "del", ns, check=False)  # takes the veth's inner end, hence both
        for link in reversed(self._made_links):
            if link in _links():
                ip_cmd("ip", "link", "del", link, check=False)
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)

    def leftovers(self) -> list[str]:
        """What of this harness still exists (empty after close)."""
        mine = [n for n in _namespaces() if n.startswith(f"{self.tag}-")]
        return mine + [link for link in _links() if link.startswith(self.tag)]

    # --- faults ---------------------------------------------------------------------------

    def isolate(self, i: int) -> None:
        ip_cmd("ip", "link", "set", self.host_veth(i), "down")
        self._down.add(i)

    def partition(self, a: Sequence[int], b: Sequence[int]) -> None:
        for x, y in ((a, b), (b, a)):
            for i in x:
                for j in y:
                    ip_cmd("ip", "-n", self.ns(i), "route", "add", "blackhole", f"{self.address(j)}/32")
                    self._blackholes.append((self.ns(i), self.address(j)))

    def slow(self, i: int) -> None:
        if self.slow_link_mechanism is None:
            raise NetnsError(f"no slow-link qdisc in this kernel ({self.netem_missing})")
        qdisc = self.slow_link_mechanism.split()
        self._slowed.add(i)
        ip_cmd("tc", "qdisc", "add", "dev", self.host_veth(i), "root", *qdisc)  # towards the node
        ip_cmd("tc", "-n", self.ns(i), "qdisc", "add", "dev", self.node_veth(i), "root", *qdisc)  # from it

    def heal(self) -> None:
        """Undo every fault in place (links up, routes removed, qdiscs removed)."""
        for i in sorted(self._down):
            ip_cmd("ip", "link", "set", self.host_veth(i), "up", check=False)
        self._down.clear()
        for ns, address in self._blackholes:
            ip_cmd("ip", "-n", ns, "route", "del", "blackhole", f"{address}/32", check=False)
        self._blackholes.clear()
        for i in sorted(self._slowed):
            ip_cmd("tc", "qdisc", "del", "dev", self.host_veth(i), "root", check=False)
            ip_cmd("tc", "-n", self.ns(i), "qdisc", "del", "dev", self.node_veth(i), "root", check=False)
        self._slowed.clear()


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if args == ["sweep"]:
        print(json.dumps({"removed": sweep_stale()}))
        return 0
    if args != ["check"]:
        print(__doc__, file=sys.stderr)
        return 2
    why = unavailable()
    if why is not None:
        print(json.dumps({"netns": False, "reason": why}))
        return 1
    with Netns(2) as net:
        report = {
            "netns": True,
            "subnet": str(net.subnet),
            "slow_link_mechanism": net.slow_link_mechanism,
            "netem_missing": net.netem_missing,
        }
    report["leftovers"] = net.leftovers()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
