"""The outbound side of the peer transport, without sockets: what goes into each PeerFrame."""

from __future__ import annotations

import asyncio

from ledger.v1 import consensus_pb2
from node.config import NodeLimits
from node.log import EventLog
from node.security import NodeSecurity
from node.transport import FRAME_MESSAGES_MAX, FRAME_OVERHEAD_BYTES, PeerLinks
from sim.factory import Factory


def test_frames_stop_at_the_message_cap_and_unsendable_messages_are_dropped() -> None:
    fx = Factory()
    limit = 64 << 10  # FRAME_MESSAGES_MAX small messages fit in one frame
    log = EventLog("BANK-A")

    async def scenario() -> list[int]:
        links = PeerLinks(
            fx.genesis,
            0,
            NodeLimits(peer_message_bytes_max=limit),
            log,
            dial=NodeSecurity(fx.genesis, None).dial,
        )
        links.send(1, b"x" * (limit - FRAME_OVERHEAD_BYTES + 1))  # could never fit in a frame
        links.send(1, b"y" * (limit - FRAME_OVERHEAD_BYTES))  # fits, alone
        for i in range(FRAME_MESSAGES_MAX + 5):
            links.send(1, i.to_bytes(2, "big"))
        frames = links._frames(links.peers[1])
        sizes = []
        for _ in range(3):
            raw = await anext(frames)
            assert len(raw) <= limit
            sizes.append(len(consensus_pb2.PeerFrame.FromString(raw).messages))
        return sizes

    assert asyncio.run(scenario()) == [1, FRAME_MESSAGES_MAX, 5]
    assert log.counters["peer_send_too_large"] == 1


def test_no_frame_passes_a_small_peer_message_limit() -> None:
    fx = Factory()
    limit = 4096
    sent = [bytes([i % 256]) * (1 + i % 300) for i in range(600)]

    async def scenario() -> list[bytes]:
        links = PeerLinks(
            fx.genesis,
            0,
            NodeLimits(peer_message_bytes_max=limit),
            EventLog("BANK-A"),
            dial=NodeSecurity(fx.genesis, None).dial,
        )
        for message in sent:
            links.send(2, message)
        frames = links._frames(links.peers[2])
        received: list[bytes] = []
        while len(received) < len(sent):
            raw = await anext(frames)
            assert len(raw) <= limit
            received += consensus_pb2.PeerFrame.FromString(raw).messages
        return received

    assert asyncio.run(scenario()) == sent  # every message, once, in order
