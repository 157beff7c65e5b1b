"""Encode once, for every viewer: the renderer's frames as VP8 (or H.264) video and Opus audio packets.

The renderer's :class:`~avatard.core.messages.Frame` carries a BGR picture and exactly ``16000/fps`` samples
of 16 kHz mono audio. :class:`MediaEncoder` is a fan-out sink that turns them into encoded packets ONCE and
hands the same :class:`EncodedPacket` objects to any number of subscribers (WebRTC peers, a Janus
publisher, ...), each through its own bounded channel::

    encoder = MediaEncoder(fanout)                     # built before the hub (a sink: its flush() is an interrupt hook)
    await nursery.start(encoder.run, renderer.fps)     # once the renderer has started (bitHuman: the model's fps)
    with encoder.subscribe("peer_3-video", VIDEO) as packets:
        async for packet in packets:                   # EncodedPacket, in order, keyframe first
            send(packet.to_av_packet())                # or packet.data, packet.pts, packet.time_base

What is encoded, and how:

* video: BGR -> yuv420p once (OpenCV's ``COLOR_BGR2YUV_I420``), then libvpx VP8 in real-time CBR mode (or
  libx264 baseline, ``codec="h264"``), one packet per frame. ``pts`` is the frame's presentation time
  (``Frame.timestamp``) in 1/90000 s, the RTP video clock, so a re-phased frame keeps its real spacing.
  A keyframe comes every :data:`KEYFRAME_INTERVAL` seconds and on :meth:`MediaEncoder.request_keyframe`
  (a viewer's PLI, a subscriber that lost a packet), at most one per :data:`KEYFRAME_MIN_GAP`.
* audio: 16 kHz -> 48 kHz with libsamplerate (``core.audio.SpeechResampler``), whose output follows its input
  evenly: every 40 ms frame is two 20 ms packets as it comes (soxr's bursts gave 1, 2, 1, 3, ... packets,
  every fourth frame's sound up to 20 ms late, which a browser's jitter buffer then waits for). Then
  libopus, mono, in 20 ms frames: one renderer frame (40 ms at 25 fps) becomes two packets. Chromium
  conceals about half of a 40 ms Opus frame handed over as one (found while checking issue 13), and 20 ms is
  what browsers send themselves. ``pts`` counts samples at 48 kHz.

Encoding runs in worker threads (``trio.to_thread``; PyAV releases the GIL while libvpx/libopus work), one
frame at a time per kind, so the clock never waits for it: VP8 takes 2-10 ms a 512x512 frame, Opus
~0.25 ms a packet. Audio and video are two fan-out sinks, so a frame's audio is never held up behind the
encoding of the picture before it. Nothing is encoded for a kind nobody subscribes to; the first video
subscriber gets a keyframe at once.

Subscribers and their full-policy (written down, counted): each subscription is a trio memory channel of
:data:`VIDEO_BUFFER` or :data:`AUDIO_BUFFER` packets. The encoder never waits for a subscriber: a packet
that finds the channel full is dropped for that subscriber and counted (``Subscription.dropped``). A video
subscriber that lost a packet cannot decode the pictures that follow it, so from then on it gets no video
packet until the next keyframe (skipped packets are counted too) and the encoder is asked for one. A
subscriber is only ever handed a keyframe as its first video packet.

Interrupts: :meth:`MediaEncoder.flush` (the hub's interrupt hook) bumps a counter; an audio packet encoded
before it that a subscriber takes afterwards is skipped, so no speech from before an interrupt is heard
after it (besides what the peer's own jitter buffer already holds). Frames that were still in the fan-out
arrive silenced by it (``core.fanout``).

Threads: :meth:`request_keyframe` may be called from any thread (it only sets a ``threading.Event``), so the
asyncio side of a WebRTC peer can pass a browser's keyframe request on. Everything else is trio-thread only.

Rejected: one aiortc encoder per peer (what aiortc does when a track yields raw frames). Its cost grows with
every viewer (a VP8 encode per viewer per frame), and handing one bgr24 frame to several aiortc encoders
crashed the process (issue 13). Rejected too: encoding inside the fan-out task; the renderer's queue
behind it holds 2 frames.
"""

from __future__ import annotations

import contextlib
import fractions
import logging
import threading

import attrs
import av
import cv2
import numpy as np
import trio
from av.video.frame import PictureType

from ..constants import RATE, VIDEO_CODECS
from ..core.audio import SpeechResampler
from ..core.fanout import SinkFrames
from ..errors import ConfigError

logger = logging.getLogger("avatard.media")

VIDEO = "video"
AUDIO = "audio"
VP8, H264 = VIDEO_CODECS
OPUS = "opus"

VIDEO_TIME_BASE = fractions.Fraction(1, 90000)  # the RTP clock of every video codec (RFC 3551)
OPUS_RATE = 48000  # Opus's RTP clock is always 48 kHz (RFC 7587), whatever the audio's bandwidth
AUDIO_TIME_BASE = fractions.Fraction(1, OPUS_RATE)
OPUS_FRAME = OPUS_RATE * 20 // 1000  # 20 ms: see the module docstring
# Target rates. The goal is <= 1 Mbit/s video + audio a viewer at 512x512, 25 fps (the JPEG stream is
# 3.4); a drawn or photographic talking head at 600 kbit/s VP8 shows no blocking. Speech in Opus is
# transparent at 32 kbit/s mono (libopus's own recommendation for wideband voip is 24-32).
VIDEO_BITRATE = 600_000
AUDIO_BITRATE = 32_000
# A keyframe this often lets a viewer that lost packets recover without asking (the issue says 1-2 s); one
# asked for (a PLI, a subscriber that dropped) comes at once, but at most one per KEYFRAME_MIN_GAP, so twenty
# viewers that join together (or a hostile one that sends PLIs in a loop) cost one keyframe, not twenty.
KEYFRAME_INTERVAL = 1.5
KEYFRAME_MIN_GAP = 0.25
# Subscriber channels. Video: 5 frames = 0.2 s (the WebSocket path's VIDEO_BACKLOG): a subscriber further
# behind than that is not live. Audio: 10 packets = 0.2 s, the same horizon.
VIDEO_BUFFER = 5
AUDIO_BUFFER = 10
# Fan-out room for each encoder task (frames): encoding takes a few ms, the room is for a busy machine.
# Beyond it the fan-out drops the frame for every subscriber at once (counted as the sink's drops).
ENCODER_SINK_BUFFER = 8

# libvpx in real-time CBR, as aiortc's own Vp8Encoder configures it (aiortc/codecs/vpx.py), except that
# keyframes are ours (gop_size is "never") and one thread: a 512x512 frame is too small to split.
VP8_OPTIONS = {
    "deadline": "realtime",
    "cpu-used": "8",
    "lag-in-frames": "0",
    "static-thresh": "1",
    "undershoot-pct": "100",
    "overshoot-pct": "15",
    "partitions": "0",
}
# libx264 for WebRTC: constrained baseline (what every browser decodes, profile-level-id 42e01f in aiortc's
# SDP), no B-frames, no look-ahead; a forced picture type I must be an IDR for a joining viewer.
H264_OPTIONS = {"preset": "veryfast", "tune": "zerolatency", "profile": "baseline", "level": "31",
                "forced-idr": "1"}
NEVER = 1 << 30  # gop_size: the encoder never decides on a keyframe by itself


@attrs.frozen
class EncodedPacket:
    """One encoded video frame or one 20 ms Opus frame, shared by every subscriber (never mutate it).

    ``pts`` is in ``time_base`` units (1/90000 video, 1/48000 audio); ``timestamp`` is the presentation time of
    the renderer frame it came from (seconds since the epoch), for frame-age measurements; ``generation`` is
    that frame's interrupt generation.
    """

    kind: str  # VIDEO or AUDIO
    codec: str  # VP8, H264 or OPUS
    data: bytes = attrs.field(repr=False)
    pts: int
    time_base: fractions.Fraction
    keyframe: bool
    timestamp: float
    generation: int

    def to_av_packet(self) -> av.Packet:
        """A fresh ``av.Packet`` of this packet (aiortc's RTCRtpSender packetizes one without re-encoding)."""
        packet = av.Packet(self.data)
        packet.pts = packet.dts = self.pts
        packet.time_base = self.time_base
        return packet


class DropPolicy:
    """One subscriber's full-policy, apart from where its queue lives (a trio channel here, an asyncio queue in a
    WebRTC track): the same rules wherever packets wait. Not thread-safe: one policy, one thread.

    Before a packet is queued, :meth:`admit` says whether to try; if the queue is full, :meth:`lost`; if it was
    queued, :meth:`passed`. A video subscriber skips everything up to the next keyframe after a loss (and at
    its start), asking the encoder for one each time it skips (``request_keyframe`` is rate-limited there)."""

    def __init__(self, kind: str, request_keyframe) -> None:
        self.kind = kind
        self._request_keyframe = request_keyframe
        self.needs_keyframe = kind == VIDEO  # a video subscriber starts at a keyframe
        self.dropped = 0

    def admit(self, packet: EncodedPacket) -> bool:
        if self.needs_keyframe and not packet.keyframe:
            self.dropped += 1
            self._request_keyframe()
            return False
        return True

    def lost(self) -> None:
        self.dropped += 1
        if self.kind == VIDEO:
            self.needs_keyframe = True
            self._request_keyframe()

    def passed(self) -> None:
        self.needs_keyframe = False


class Subscription:
    """One subscriber's end: an async iterator of :class:`EncodedPacket` of one kind. Counters: ``delivered``,
    ``dropped`` (channel full, or video skipped while waiting for a keyframe: :class:`DropPolicy`), ``stale``
    (audio from before an interrupt)."""

    def __init__(self, name: str, kind: str, buffer: int, encoder: MediaEncoder) -> None:
        self.name = name
        self.kind = kind
        self._send, self._receive = trio.open_memory_channel[EncodedPacket](buffer)
        self._encoder = encoder
        self.policy = DropPolicy(kind, encoder.request_keyframe)
        self.delivered = 0
        self.stale = 0

    @property
    def dropped(self) -> int:
        return self.policy.dropped

    @property
    def needs_keyframe(self) -> bool:
        return self.policy.needs_keyframe

    def _offer(self, packet: EncodedPacket) -> None:
        """The encoder's side: never waits (see the module docstring for the policy)."""
        if not self.policy.admit(packet):
            return
        try:
            self._send.send_nowait(packet)
        except trio.WouldBlock:
            self.policy.lost()
            return
        self.policy.passed()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> EncodedPacket:
        while True:
            try:
                packet = await self._receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise StopAsyncIteration from None
            if packet.kind == AUDIO and packet.generation < self._encoder.flushed_generation:
                self.stale += 1
                continue
            self.delivered += 1
            return packet

    def info(self) -> dict:
        return {"kind": self.kind, "delivered": self.delivered, "dropped": self.dropped, "stale": self.stale}

    def _close(self) -> None:
        self._send.close()
        self._receive.close()


class _VideoCodec:
    """libvpx or libx264 behind one call; used by one worker thread at a time."""

    def __init__(self, codec: str, bitrate: int) -> None:
        self.codec = codec
        self._bitrate = bitrate
        self.fps = 25  # set by MediaEncoder.run(); x264's rate control needs it
        self._context: av.VideoCodecContext | None = None

    def _open(self, width: int, height: int) -> av.VideoCodecContext:
        name, options = ("libvpx", VP8_OPTIONS) if self.codec == VP8 else ("libx264", H264_OPTIONS)
        context = av.CodecContext.create(name, "w")
        context.width, context.height, context.pix_fmt = width, height, "yuv420p"
        context.time_base = VIDEO_TIME_BASE
        context.framerate = fractions.Fraction(self.fps, 1)
        context.bit_rate = self._bitrate
        context.gop_size = NEVER
        context.thread_count = 1
        opts = dict(options)
        if self.codec == VP8:  # CBR: minrate = maxrate = bit_rate, with a 1 s buffer (aiortc's settings)
            opts.update(minrate=str(self._bitrate), maxrate=str(self._bitrate), bufsize=str(self._bitrate))
        context.options = opts
        return context

    def encode(self, image: np.ndarray, pts: int, keyframe: bool) -> list[tuple[bytes, bool]]:
        height, width = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2  # 4:2:0 needs even sides
        if self._context is None or (self._context.width, self._context.height) != (width, height):
            self._context = self._open(width, height)  # a new size (the fallback renderer took over)
            keyframe = True
        yuv = cv2.cvtColor(np.ascontiguousarray(image[:height, :width]), cv2.COLOR_BGR2YUV_I420)
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = pts
        frame.time_base = VIDEO_TIME_BASE
        if keyframe:
            frame.pict_type = PictureType.I
        return [(bytes(packet), bool(packet.is_keyframe)) for packet in self._context.encode(frame)]


class _OpusCodec:
    """16 kHz int16 in, 20 ms Opus packets out; used by one worker thread at a time."""

    def __init__(self, bitrate: int) -> None:
        self._bitrate = bitrate
        self._restart()

    def _restart(self) -> None:
        self._context = av.CodecContext.create("libopus", "w")
        self._context.sample_rate = OPUS_RATE
        self._context.layout = "mono"
        self._context.format = "s16"
        self._context.bit_rate = self._bitrate
        self._context.options = {"application": "voip", "frame_duration": "20"}
        self._resampler = SpeechResampler(RATE, OPUS_RATE)
        self._pending = np.zeros(0, dtype=np.int16)

    def encode(self, samples: np.ndarray, restart: bool) -> list[bytes]:
        if restart:  # after a pause with nobody listening: no old tail, no resampler state
            self._restart()
        self._pending = np.concatenate([self._pending, self._resampler.process(samples)])
        packets: list[bytes] = []
        while len(self._pending) >= OPUS_FRAME:
            chunk, self._pending = self._pending[:OPUS_FRAME], self._pending[OPUS_FRAME:]
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = OPUS_RATE
            packets.extend(bytes(packet) for packet in self._context.encode(frame))
        return packets


class MediaEncoder:
    """The encode-once sink. Build it with the fan-out, run :meth:`run` in the nursery that owns the
    front end, subscribe with :meth:`subscribe`. ``codec`` is :data:`VP8` or :data:`H264`."""

    name = "media-encoder"

    def __init__(self, fanout, *, codec: str = VP8, video_bitrate: int = VIDEO_BITRATE,
                 audio_bitrate: int = AUDIO_BITRATE) -> None:
        if codec not in VIDEO_CODECS:
            raise ConfigError(f"video codec {codec!r} is not one of {', '.join(VIDEO_CODECS)}")
        self.fanout = fanout
        self.codec = codec
        self._video = _VideoCodec(codec, video_bitrate)
        self._audio = _OpusCodec(audio_bitrate)
        self._subscriptions: dict[str, list[Subscription]] = {VIDEO: [], AUDIO: []}
        self._keyframe_wanted = threading.Event()
        self._last_keyframe = -float("inf")  # trio clock
        self._epoch: float | None = None  # Frame.timestamp of pts 0
        self._audio_pts: int | None = None  # next audio pts; None when audio encoding (re)starts
        self.flushed_generation = 0
        self.frames_encoded = 0
        self.keyframes = 0
        self.audio_packets = 0
        self.bytes_encoded = {VIDEO: 0, AUDIO: 0}
        self.encode_failures = 0
        self._dropped_gone = 0  # drops of subscriptions that have ended, so the total only grows

    # -- subscribers ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def subscribe(self, name: str, kind: str, buffer: int | None = None):
        """Subscribe to ``kind`` (VIDEO or AUDIO) for the duration of the ``with``; yields a :class:`Subscription`.

        ``buffer`` defaults to :data:`VIDEO_BUFFER` / :data:`AUDIO_BUFFER`. A video subscription asks for a
        keyframe at once and gets nothing before it."""
        if kind not in self._subscriptions:
            raise ValueError(f"kind must be {VIDEO!r} or {AUDIO!r}, got {kind!r}")
        sub = Subscription(name, kind, buffer or (VIDEO_BUFFER if kind == VIDEO else AUDIO_BUFFER), self)
        self._subscriptions[kind].append(sub)
        if kind == VIDEO:
            self.request_keyframe()
        try:
            yield sub
        finally:
            self._subscriptions[kind].remove(sub)
            self._dropped_gone += sub.dropped
            sub._close()

    @property
    def subscribers(self) -> int:
        return sum(len(subs) for subs in self._subscriptions.values())

    def request_keyframe(self) -> None:
        """Ask for a keyframe (rate-limited to one per KEYFRAME_MIN_GAP). Safe from any thread."""
        self._keyframe_wanted.set()

    def flush(self) -> None:
        """Interrupt hook: audio packets encoded so far are not delivered any more."""
        self.flushed_generation = self.fanout.generation

    def status(self) -> dict:
        dropped = self._dropped_gone + sum(s.dropped for subs in self._subscriptions.values() for s in subs)
        return {"codec": self.codec, "subscribers": self.subscribers, "frames_encoded": self.frames_encoded,
                "keyframes": self.keyframes, "audio_packets": self.audio_packets,
                "video_bytes": self.bytes_encoded[VIDEO], "audio_bytes": self.bytes_encoded[AUDIO],
                "packets_dropped": dropped, "encode_failures": self.encode_failures}

    # -- encoding ---------------------------------------------------------------------------------

    async def run(self, fps: int, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Take frames from the fan-out (two sinks, audio and video) until cancelled; ``fps`` is the renderer's."""
        self._video.fps = fps
        with self.fanout.sink("media-video", ENCODER_SINK_BUFFER) as video, \
                self.fanout.sink("media-audio", ENCODER_SINK_BUFFER) as audio:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._encode_video, video)
                nursery.start_soon(self._encode_audio, audio)
                task_status.started()

    def _pts(self, timestamp: float, rate: int) -> int:
        if self._epoch is None:
            self._epoch = timestamp
        return round((timestamp - self._epoch) * rate)

    def _keyframe_due(self) -> bool:
        now = trio.current_time()
        since = now - self._last_keyframe
        if since >= KEYFRAME_INTERVAL or (self._keyframe_wanted.is_set() and since >= KEYFRAME_MIN_GAP):
            self._keyframe_wanted.clear()
            self._last_keyframe = now
            return True
        return False

    async def _encode_video(self, frames: SinkFrames) -> None:
        async for frame in frames:
            if not self._subscriptions[VIDEO]:
                continue
            pts = self._pts(frame.timestamp, VIDEO_TIME_BASE.denominator)
            keyframe = self._keyframe_due()
            try:
                packets = await trio.to_thread.run_sync(self._video.encode, frame.image, pts, keyframe)
            except (av.FFmpegError, ValueError, cv2.error):
                self.encode_failures += 1
                logger.warning("video frame %d could not be encoded", frame.index, exc_info=True)
                self.request_keyframe()
                continue
            for data, is_key in packets:
                self.frames_encoded += 1
                self.keyframes += is_key
                self.bytes_encoded[VIDEO] += len(data)
                packet = EncodedPacket(VIDEO, self.codec, data, pts, VIDEO_TIME_BASE, is_key, frame.timestamp,
                                       frame.generation)
                for sub in list(self._subscriptions[VIDEO]):
                    sub._offer(packet)

    async def _encode_audio(self, frames: SinkFrames) -> None:
        async for frame in frames:
            if not self._subscriptions[AUDIO]:
                self._audio_pts = None
                continue
            restart = self._audio_pts is None
            if restart:
                self._audio_pts = self._pts(frame.timestamp, OPUS_RATE)
            try:
                packets = await trio.to_thread.run_sync(self._audio.encode, frame.audio, restart)
            except (av.FFmpegError, ValueError):
                self.encode_failures += 1
                logger.warning("audio of frame %d could not be encoded", frame.index, exc_info=True)
                self._audio_pts = None
                continue
            for data in packets:
                packet = EncodedPacket(AUDIO, OPUS, data, self._audio_pts, AUDIO_TIME_BASE, True, frame.timestamp,
                                       frame.generation)
                self._audio_pts += OPUS_FRAME
                self.audio_packets += 1
                self.bytes_encoded[AUDIO] += len(data)
                for sub in list(self._subscriptions[AUDIO]):
                    sub._offer(packet)
