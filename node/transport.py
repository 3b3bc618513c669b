"""Replica-to-replica transport on grpc.aio: bytes in, bytes out, nothing else.

Inbound, ReplicaService takes raw bytes (no generated deserializer), so garbage from anyone on
the replica port becomes a counted drop rather than an exception inside gRPC. Outbound, one
long-lived client stream per peer, fed by a bounded queue (each write a PeerFrame of the
messages queued at the time) and re-dialled with capped exponential backoff; a message past the queue bound is dropped and counted (PBFT tolerates
loss: retransmission is the replica's view change and the catch-up path, not ours).
Messages for a peer whose link is down wait in its queue up to peer_queue_max, then drop.
Whether a message really comes from a member is decided by the replica, which verifies the
signature on the bytes; here we only drop what cannot be a member's message at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
import grpc.aio

from ledger import wirescan
from ledger.genesis import Genesis
from ledger.v1 import consensus_pb2, tx_pb2
from node.config import NodeLimits
from node.log import EventLog
from node.peerauth import PeerAuth
from node.security import Dial
from node.snapshot import SnapshotBadRequest, SnapshotUnavailable
from node.storage.prune import BlocksPruned

SERVICE = "ledger.v1.ReplicaService"
_ACK = consensus_pb2.PeerAck().SerializeToString()
FORWARD_TIMEOUT_S = 5.0
FETCH_TIMEOUT_S = 10.0
# A frame stops taking queued messages past this many bytes (a single larger message still goes,
# alone): frames stay far below peer_message_bytes_max, and one vote burst is one gRPC message.
FRAME_BYTES_SOFT_MAX = 1 << 20
# ... and at this many messages. A frame with more is not a member's and is dropped whole, unread:
# one frame's checks stay a few milliseconds of the event loop, whatever a sender packs in it.
FRAME_MESSAGES_MAX = 1024
# A stream that sends this many frames that are not PeerFrames (or hold too many messages) is
# closed: a member's transport never does.
BAD_FRAMES_MAX = 16
# What framing adds to one message (field tag and length); a message that cannot fit in a frame
# under peer_message_bytes_max with it is dropped at send, since no peer could take it.
FRAME_OVERHEAD_BYTES = 16


def grpc_options(limits: NodeLimits, receive_bytes_max: int, send_bytes_max: int) -> list[tuple[str, Any]]:
    """Options of every channel the node dials and (with server_options) of its servers."""
    return [
        ("grpc.max_receive_message_length", receive_bytes_max),
        ("grpc.max_send_message_length", send_bytes_max),
        ("grpc.keepalive_time_ms", limits.keepalive_ms),
        ("grpc.keepalive_timeout_ms", limits.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.so_reuseport", 0),
        # gRPC's default first reconnect backoff is 1 s; peers starting together (or one
        # restarting) should find each other in tens of milliseconds.
        ("grpc.initial_reconnect_backoff_ms", 50),
        ("grpc.min_reconnect_backoff_ms", 50),
        ("grpc.max_reconnect_backoff_ms", limits.peer_backoff_ms_max),
    ]


def server_options(
    limits: NodeLimits,
    receive_bytes_max: int,
    send_bytes_max: int,
    connections_max: int,
    streams_per_connection_max: int,
) -> list[tuple[str, Any]]:
    """grpc_options plus what bounds the connections a server holds (gRPC core channel args,
    include/grpc/impl/channel_arg_names.h). connections_max is the per-port cap after the
    open-file budget (node/__main__.py); gRPC core counts connections per listening port and
    cannot count them per source address (ConnectionQuota ignores the peer)."""
    return [
        *grpc_options(limits, receive_bytes_max, send_bytes_max),
        # Closed at accept past this many open connections on the port.
        ("grpc.max_allowed_incoming_connections", connections_max),
        # A connection must complete its handshake and send HTTP/2 SETTINGS within this; a
        # silent TCP connection or a half-sent preface is closed then (gRPC's default: 120 s).
        ("grpc.server_handshake_timeout_ms", limits.handshake_timeout_ms),
        # A connection with no call in flight for this long gets GOAWAY (default: never).
        ("grpc.max_connection_idle_ms", limits.connection_idle_ms),
        ("grpc.max_concurrent_streams", streams_per_connection_max),
        # Ping enforcement must accept our own keepalive (every keepalive_ms, even with no data
        # and no call). gRPC's default allows one ping per 5 minutes without data and sends
        # GOAWAY ENHANCE_YOUR_CALM "too_many_pings" at the third early one: peer links were cut
        # and re-dialled 40-110 s after start on an idle consortium. Half the period leaves room
        # for timer jitter; a client pinging faster still gets GOAWAY after 2 strikes.
        ("grpc.http2.min_ping_interval_without_data_ms", limits.keepalive_ms // 2),
        ("grpc.http2.max_ping_strikes", 2),
        # No bandwidth-delay probing: it grows each stream's receive window far past what the
        # node reads, so a sender could park hundreds of MB in gRPC's buffers (a forged-vote flood
        # took a node to 633 MB and the machine's CPU to receiving junk, while the node consumed
        # a few thousand messages a second). With the fixed window a flooding stream stalls at
        # the rate its (fair) share of the loop reads it.
        ("grpc.http2.bdp_probe", 0),
    ]


_Request = TypeVar("_Request", consensus_pb2.FetchBlocksRequest, consensus_pb2.SnapshotRequest)


def _identity(raw: bytes) -> bytes:
    return raw


class ReplicaInbound(Protocol):
    """What the transport hands to the driver, on the event loop. ``source`` names one inbound
    connection (a stream, or the peer address of relays): the driver's queue is fair per source."""

    async def on_peer_messages(self, source: Hashable, messages: Sequence[bytes]) -> bool:
        """Queue them, waiting while the source's queue is full; False: close the connection."""
        ...

    def on_forward(self, source: Hashable, envelopes: list[bytes]) -> None: ...

    def closed(self, source: Hashable) -> None: ...

    def fetch_blocks(self, from_height: int, max_blocks: int) -> tuple[list[bytes], int]:
        """Certified blocks from from_height on (at most max_blocks), and our last height."""
        ...

    async def fetch_snapshot(self, request: consensus_pb2.SnapshotRequest) -> consensus_pb2.SnapshotChunk:
        """A chunk of the state at a stable checkpoint (node/snapshot.py); SnapshotUnavailable
        or SnapshotBadRequest."""
        ...


def _frame_messages(frame: bytes) -> list[bytes]:
    """The messages of a PeerFrame. A large frame is counted before anything is built: one
    packed with millions of tiny entries costs FRAME_MESSAGES_MAX steps, not millions of objects
    (a small one is parsed by protobuf, which is bounded by its size: see wirescan)."""
    if len(frame) > wirescan.PARSE_DIRECT_BYTES_MAX:
        return wirescan.repeated_bytes(frame, 1, FRAME_MESSAGES_MAX)
    try:
        messages = consensus_pb2.PeerFrame.FromString(frame).messages
    except Exception as exc:  # protobuf's DecodeError and others on garbage
        raise wirescan.ScanError("not a PeerFrame") from exc
    if len(messages) > FRAME_MESSAGES_MAX:
        raise wirescan.TooManyError(f"more than {FRAME_MESSAGES_MAX} messages")
    return list(messages)


_SIGNED_ONLY = frozenset({1})  # PeerMessage.message: the batch beside it is not even copied here


def check_peer_message(raw: bytes, n: int) -> str | None:
    """Why raw cannot be a member's PeerMessage (a counter name), or None if it may be. Only
    the signed part is parsed: the batch beside it is not covered by the signature, and is
    parsed by the replica only once the signature verified (verify before decode)."""
    try:
        if len(raw) <= wirescan.PARSE_DIRECT_BYTES_MAX:
            pm = consensus_pb2.PeerMessage.FromString(raw)
            if not pm.HasField("message"):
                return "peer_garbage"
            signed = pm.message
        else:
            signed_raw = wirescan.singular_fields(raw, wanted=_SIGNED_ONLY).get(1)
            if signed_raw is None:
                return "peer_garbage"
            signed = consensus_pb2.SignedMessage.FromString(signed_raw)
    except Exception:  # ScanError, protobuf's DecodeError and others on garbage
        return "peer_garbage"
    if not signed.body:
        return "peer_garbage"
    if signed.signer >= n:
        return "peer_non_member"
    if len(signed.signature) != 64:
        return "peer_bad_signature"
    return None


class ReplicaServer:
    """The ReplicaService servicer, registered with raw-bytes handlers."""

    def __init__(
        self,
        genesis: Genesis,
        limits: NodeLimits,
        inbound: ReplicaInbound,
        log: EventLog,
        auth: PeerAuth | None = None,  # None: plaintext, anyone may call (config "tls": false)
    ):
        self._auth = auth
        self._genesis = genesis
        self._limits = limits
        self._inbound = inbound
        self._log = log
        self._streams = itertools.count()

    async def stream(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        if self._auth is not None:  # before a byte of the stream is read
            await self._auth.require_member(context)
        source = ("stream", next(self._streams), context.peer())
        bad_frames = 0
        try:
            async for frame in requests:
                try:
                    messages = _frame_messages(frame)
                except wirescan.ScanError as exc:
                    self._log.count(
                        "peer_frame_too_many" if isinstance(exc, wirescan.TooManyError) else "peer_garbage"
                    )
                    bad_frames += 1
                    if bad_frames >= BAD_FRAMES_MAX:
                        self._log.event("peer_stream_closed", source=str(source), bad_frames=bad_frames)
                        break
                    continue
                passed: list[bytes] = []
                for raw in messages:
                    reason = check_peer_message(raw, self._genesis.n)
                    if reason is not None:
                        self._log.count(reason)
                        continue
                    passed.append(raw)
                self._log.count("peer_messages_in", len(passed))
                if not await self._inbound.on_peer_messages(source, passed):
                    break
        except asyncio.CancelledError:
            raise
        except Exception:  # a peer's stream broke (oversized message, reset): its loss only
            self._log.count("peer_stream_errors")
        finally:
            self._inbound.closed(source)
        return _ACK

    async def forward(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        if self._auth is not None:
            await self._auth.require_member(context)
        try:
            envelopes = wirescan.repeated_bytes(raw, 1, self._limits.submit_batch_max)
        except wirescan.ScanError as exc:
            self._log.count(
                "peer_forward_too_many" if isinstance(exc, wirescan.TooManyError) else "peer_garbage"
            )
            return _ACK
        self._inbound.on_forward(("forward", context.peer()), envelopes)
        return _ACK

    async def _member_request(
        self, cls: type[_Request], raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> _Request:
        """A member's request on the replica port (mutual TLS, then PeerAuth), parsed;
        INVALID_ARGUMENT when it does not parse."""
        if self._auth is not None:
            await self._auth.require_member(context)
        try:
            return cls.FromString(raw)
        except Exception:
            self._log.count("peer_garbage")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a {cls.__name__}")
            raise AssertionError("unreachable") from None  # abort raises

    async def fetch(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        req = await self._member_request(consensus_pb2.FetchBlocksRequest, raw, context)
        max_blocks = min(max(req.max_blocks, 1), self._limits.fetch_blocks_max)
        try:
            blocks, last = self._inbound.fetch_blocks(req.from_height, max_blocks)
        except BlocksPruned as exc:  # the peer needs state sync (or an archive node)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            raise AssertionError("unreachable") from None  # abort raises
        # Stay under the message limit: stop adding blocks once the next would pass it.
        budget = self._limits.peer_message_bytes_max - 1024
        out = consensus_pb2.FetchBlocksResponse(last_height=last)
        used = 0
        for block in blocks:
            if used + len(block) + 8 > budget and used > 0:
                break
            out.blocks.append(consensus_pb2.CertifiedBlock.FromString(block))
            used += len(block) + 8
        return out.SerializeToString()

    async def snapshot(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        """FetchSnapshot: members only."""
        req = await self._member_request(consensus_pb2.SnapshotRequest, raw, context)
        try:
            chunk = await self._inbound.fetch_snapshot(req)
        except SnapshotBadRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise AssertionError("unreachable") from None
        except SnapshotUnavailable as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            raise AssertionError("unreachable") from None
        return chunk.SerializeToString()

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Stream": grpc.stream_unary_rpc_method_handler(
                    self.stream, request_deserializer=_identity, response_serializer=_identity
                ),
                "ForwardTransactions": grpc.unary_unary_rpc_method_handler(
                    self.forward, request_deserializer=_identity, response_serializer=_identity
                ),
                "FetchBlocks": grpc.unary_unary_rpc_method_handler(
                    self.fetch, request_deserializer=_identity, response_serializer=_identity
                ),
                "FetchSnapshot": grpc.unary_unary_rpc_method_handler(
                    self.snapshot, request_deserializer=_identity, response_serializer=_identity
                ),
            },
        )


@dataclass
class _PeerState:
    replica: int
    member_id: str
    address: str
    queue: asyncio.Queue[bytes]
    channel: grpc.aio.Channel | None = None
    up: bool = False
    task: asyncio.Task[None] | None = None


class PeerLinks:
    """Outbound links to every other replica."""

    def __init__(
        self,
        genesis: Genesis,
        own_replica: int,
        limits: NodeLimits,
        log: EventLog,
        on_peer_up: Callable[[int], None] | None = None,
        *,
        dial: Dial,  # node/security.py: TLS with the node's certificate, or plaintext
    ) -> None:
        self._dial = dial
        self._limits = limits
        self._log = log
        self._on_peer_up = on_peer_up
        self._closing = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self.peers: dict[int, _PeerState] = {
            m.replica: _PeerState(
                m.replica, m.member_id, m.replica_address, asyncio.Queue(limits.peer_queue_max)
            )
            for m in genesis.members
            if m.replica != own_replica
        }

    def start(self) -> None:
        for peer in self.peers.values():
            peer.channel = self._dial(
                peer.address,
                grpc_options(
                    self._limits, self._limits.peer_message_bytes_max, self._limits.peer_message_bytes_max
                ),
            )
            peer.task = asyncio.get_running_loop().create_task(self._run(peer))

    def up_count(self) -> int:
        return sum(1 for p in self.peers.values() if p.up)

    def is_up(self, replica: int) -> bool:
        peer = self.peers.get(replica)
        return peer is not None and peer.up

    def send(self, to: int, message: bytes) -> None:
        peer = self.peers.get(to)
        assert peer is not None, f"send to unknown replica {to}"
        # Queued even while the link is down: a peer that is just starting, or reconnecting
        # after a blip, still gets our votes and attestations. The bound keeps a dead peer
        # from costing more than peer_queue_max messages of memory.
        if len(message) + FRAME_OVERHEAD_BYTES > self._limits.peer_message_bytes_max:
            self._log.count("peer_send_too_large")
            return
        if peer.queue.full():
            peer.queue.get_nowait()  # drop the oldest: the newest votes matter most
            self._log.count("peer_send_dropped_full")
        peer.queue.put_nowait(message)

    def broadcast(self, message: bytes) -> None:
        for replica in self.peers:
            self.send(replica, message)

    def forward(self, to: int, envelopes: Sequence[bytes]) -> None:
        peer = self.peers.get(to)
        assert peer is not None and peer.channel is not None, f"forward to unknown replica {to}"
        body = consensus_pb2.Forward(envelopes=[tx_pb2.Envelope.FromString(e) for e in envelopes])
        call = peer.channel.unary_unary(
            f"/{SERVICE}/ForwardTransactions", request_serializer=_identity, response_deserializer=_identity
        )
        # wait_for_ready: a peer that is (re)connecting gets the requests once it is up, within
        # the timeout, instead of an immediate UNAVAILABLE that would lose them.
        request = body.SerializeToString()
        self._spawn(self._forward(call(request, timeout=FORWARD_TIMEOUT_S, wait_for_ready=True)))

    async def _forward(self, call: Awaitable[Any]) -> None:
        try:
            await call
            self._log.count("forwards_out")
        except grpc.aio.AioRpcError:
            self._log.count("forwards_failed")

    async def fetch_blocks(self, peer_id: int, from_height: int) -> tuple[list[bytes], int] | None:
        """Ask one peer for certified blocks; None when it cannot answer."""
        peer = self.peers.get(peer_id)
        if peer is None or peer.channel is None:
            return None
        call = peer.channel.unary_unary(
            f"/{SERVICE}/FetchBlocks", request_serializer=_identity, response_deserializer=_identity
        )
        req = consensus_pb2.FetchBlocksRequest(
            from_height=from_height, max_blocks=self._limits.fetch_blocks_max
        )
        try:
            raw = await call(req.SerializeToString(), timeout=FETCH_TIMEOUT_S)
            resp = consensus_pb2.FetchBlocksResponse.FromString(raw)
        except grpc.aio.AioRpcError as exc:
            self._log.count("fetch_failed")
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                # The peer pruned the blocks we need: catch-up needs an archive node or state
                # sync. Said in the log at the first time and every 100th after that.
                self._log.count("fetch_pruned")
                if self._log.counters["fetch_pruned"] % 100 == 1:
                    self._log.event(
                        "catch_up_pruned",
                        peer=peer_id,
                        from_height=from_height,
                        reason=exc.details(),
                        needs="an archive node among the peers, or state sync",
                    )
            return None
        except Exception:
            self._log.count("peer_garbage")
            return None
        return [b.SerializeToString() for b in resp.blocks], resp.last_height

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _frames(self, peer: _PeerState) -> AsyncIterator[bytes]:
        """PeerFrames of what is queued for the peer: the first message waited for, then the
        ones already queued behind it, up to FRAME_BYTES_SOFT_MAX (a message that would pass
        it starts the next frame) and FRAME_MESSAGES_MAX."""
        budget = min(FRAME_BYTES_SOFT_MAX, self._limits.peer_message_bytes_max)
        carry: bytes | None = None
        while True:
            first = carry if carry is not None else await peer.queue.get()
            carry = None
            messages, size = [first], len(first) + FRAME_OVERHEAD_BYTES
            while not peer.queue.empty() and len(messages) < FRAME_MESSAGES_MAX:
                nxt = peer.queue.get_nowait()
                if size + len(nxt) + FRAME_OVERHEAD_BYTES > budget:
                    carry = nxt
                    break
                messages.append(nxt)
                size += len(nxt) + FRAME_OVERHEAD_BYTES
            yield consensus_pb2.PeerFrame(messages=messages).SerializeToString()

    async def _run(self, peer: _PeerState) -> None:
        backoff_ms = 50
        assert peer.channel is not None
        stream = peer.channel.stream_unary(
            f"/{SERVICE}/Stream", request_serializer=_identity, response_deserializer=_identity
        )
        while not self._closing:
            try:
                await asyncio.wait_for(peer.channel.channel_ready(), timeout=backoff_ms / 1000)
            except TimeoutError:
                backoff_ms = min(backoff_ms * 2, self._limits.peer_backoff_ms_max)
                continue
            backoff_ms = 50
            peer.up = True
            self._log.event("peer_up", peer=peer.member_id, replica=peer.replica)
            if self._on_peer_up is not None:
                self._on_peer_up(peer.replica)
            try:
                await stream(self._frames(peer))
            except grpc.aio.AioRpcError as exc:
                self._log.event("peer_down", peer=peer.member_id, replica=peer.replica, code=exc.code().name)
            peer.up = False

    async def close(self) -> None:
        self._closing = True
        for peer in self.peers.values():
            if peer.task is not None:
                peer.task.cancel()
        for peer in self.peers.values():
            if peer.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await peer.task
            if peer.channel is not None:
                await peer.channel.close(None)
        for task in list(self._tasks):
            task.cancel()
