"""The Gemini brain's outbox while it has no connection, in process: no network, no asyncio loop.

Input goes in through the brain's intake (a memory channel, as the hub feeds it); what would be sent is
read from the outbox by :func:`outbox`, the one place that knows how the brain stores it.
"""

from __future__ import annotations

import types

import numpy as np
import trio
import trio.testing

from avatard.brains import gemini
from avatard.core.events import EventBus
from avatard.core.messages import UserAudio, UserText


class FakeLatency:
    def user_input_ended(self, ago: float = 0.0) -> None:
        pass


def make_brain(events: EventBus) -> gemini.GeminiBrain:
    config = types.SimpleNamespace(gemini_api_key="unused", gemini_base_url=None, gemini_ca_file=None,
                                   gemini_model="unused", gemini_voice="Puck", instructions="")
    return gemini.GeminiBrain(config=config, renderer=None, events=events, latency=FakeLatency(), keywords=None)


def outbox(brain) -> tuple[list, list[bytes]]:
    """(turns, audio chunks) waiting for the connection, in sending order."""
    return list(brain._turns_out), list(brain._audio_out)


def chunk(n: int) -> np.ndarray:
    return np.full(320, n, np.int16)  # 20 ms, numbered by its value


async def feed(brain, messages) -> None:
    """Run the intake over ``messages`` until it has taken all of them."""
    send, receive = trio.open_memory_channel(0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(brain._intake, receive)
        async with send:
            for message in messages:
                await send.send(message)
        await trio.testing.wait_all_tasks_blocked()


async def test_audio_beyond_the_outbox_drops_the_oldest_and_counts():
    events = EventBus()
    brain = make_brain(events)
    extra = 150
    with events.subscribe(frozenset({"error"})) as errors:
        await feed(brain, [UserAudio(chunk(n % 30000)) for n in range(gemini.OUTBOX_AUDIO + extra)])
        reported = []
        while True:
            try:
                reported.append(errors.receive_nowait())
            except trio.WouldBlock:
                break
    turns, audio = outbox(brain)
    assert turns == []
    assert len(audio) == gemini.OUTBOX_AUDIO
    first = [int(np.frombuffer(c, "<i2")[0]) for c in audio]
    assert first == list(range(extra, gemini.OUTBOX_AUDIO + extra)), "the newest kept, oldest gone, order kept"
    assert brain.audio_dropped == extra and brain.status()["audio_dropped"] == extra
    # Reported, but not once per chunk: the first drop, then every 100th.
    assert [e.data["code"] for e in reported] == ["audio_dropped", "audio_dropped"]
    assert "1 audio chunks dropped" in reported[0].data["message"]


async def test_audio_within_the_outbox_is_all_kept():
    events = EventBus()
    brain = make_brain(events)
    await feed(brain, [UserAudio(chunk(n)) for n in range(gemini.OUTBOX_AUDIO)])
    _, audio = outbox(brain)
    assert [int(np.frombuffer(c, "<i2")[0]) for c in audio] == list(range(gemini.OUTBOX_AUDIO))
    assert brain.audio_dropped == 0


async def test_turns_beyond_the_limit_are_refused_with_an_error_and_order_is_kept():
    events = EventBus()
    brain = make_brain(events)
    texts = [f"turn {n}" for n in range(gemini.OUTBOX_TURNS + 3)]
    with events.subscribe(frozenset({"error", "transcription"})) as seen:
        await feed(brain, [UserText(t) for t in texts])
        received = []
        while True:
            try:
                received.append(seen.receive_nowait())
            except trio.WouldBlock:
                break
    turns, audio = outbox(brain)
    assert turns == [("text", t) for t in texts[:gemini.OUTBOX_TURNS]] and audio == []
    assert brain.turns == gemini.OUTBOX_TURNS
    refused = [e for e in received if e.kind == "error"]
    assert [e.data["code"] for e in refused] == ["busy"] * 3
    accepted = [e.data["text"] for e in received if e.kind == "transcription"]
    assert accepted == texts[:gemini.OUTBOX_TURNS], "a refused turn is not shown as said"


async def test_turns_and_audio_interleaved_keep_their_own_order():
    events = EventBus()
    brain = make_brain(events)
    messages = []
    for n in range(5):
        messages += [UserAudio(chunk(n)), UserText(f"turn {n}")]
    await feed(brain, messages)
    turns, audio = outbox(brain)
    assert turns == [("text", f"turn {n}") for n in range(5)]
    assert [int(np.frombuffer(c, "<i2")[0]) for c in audio] == list(range(5))
