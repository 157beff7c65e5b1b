"""Encoded packets -> RTP datagrams, once, for every Janus server alike.

The payload formats are aiortc's, not ours: its encoders' ``pack(av.Packet)`` split an already encoded
frame into RTP payloads (VP8: RFC 7741 payload descriptor with a running picture id; H.264: RFC 6184
STAP-A/FU-A) and convert the packet's pts to the RTP clock, and ``aiortc.rtp.RtpPacket`` writes the RTP
header (RFC 3550). Neither ``Vp8Encoder()`` nor ``H264Encoder()`` opens a codec until ``encode`` is
called, so they serve here as payloaders only. Opus needs no payloader (RFC 7587: one Opus packet is one
RTP payload, 48 kHz clock); aiortc's ``OpusEncoder()`` would open a libopus encoder, so it is not used.

The marker bit is set on the last packet of each video frame (RFC 7741 §4.1, RFC 6184 §5.1): Janus and
the browsers' jitter buffers use it to know a frame is complete.
"""

from __future__ import annotations

import fractions
import random

from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.mediastreams import convert_timebase
from aiortc.rtp import RtpPacket

from ..protocol.janus import AUDIO_PT, VIDEO_PT

OPUS_CLOCK = fractions.Fraction(1, 48000)


class RtpStream:
    """One RTP stream: its SSRC, sequence numbers and a random timestamp offset (RFC 3550 §5.1)."""

    def __init__(self, payload_type: int) -> None:
        self.payload_type = payload_type
        self.ssrc = random.getrandbits(32)
        self.sequence = random.getrandbits(16)
        self._offset = random.getrandbits(32)

    def datagrams(self, payloads: list[bytes], timestamp: int, *, marker_on_last: bool) -> list[bytes]:
        out = []
        last = len(payloads) - 1
        for index, payload in enumerate(payloads):
            packet = RtpPacket(payload_type=self.payload_type, marker=int(marker_on_last and index == last),
                               sequence_number=self.sequence, timestamp=(timestamp + self._offset) & 0xFFFFFFFF,
                               ssrc=self.ssrc, payload=payload)
            self.sequence = (self.sequence + 1) & 0xFFFF
            out.append(packet.serialize())
        return out


class Packetizer:
    """``audio(packet)`` / ``video(packet)``: av.Packets from the encoder -> RTP datagrams."""

    def __init__(self, video_codec: str) -> None:
        self.audio_stream = RtpStream(AUDIO_PT)
        self.video_stream = RtpStream(VIDEO_PT[video_codec])
        self._video = Vp8Encoder() if video_codec == "vp8" else H264Encoder()

    def audio(self, packet) -> list[bytes]:
        timestamp = convert_timebase(packet.pts, packet.time_base, OPUS_CLOCK)
        return self.audio_stream.datagrams([bytes(packet)], timestamp, marker_on_last=False)

    def video(self, packet) -> list[bytes]:
        payloads, timestamp = self._video.pack(packet)
        return self.video_stream.datagrams(payloads, timestamp, marker_on_last=True)
