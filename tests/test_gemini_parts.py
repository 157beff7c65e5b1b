"""The Gemini brain's pure parts, synchronously: the generations table, the retry decision, the outbox."""

import pytest
import trio
from google.genai import errors, types

from avatard.brains.gemini import failures
from avatard.brains.gemini.generations import CLIENT_CONTENT, GENERATIONS, NEWEST, REALTIME_TEXT, generation_for
from avatard.brains.gemini.outbox import AUDIO, OUTBOX_AUDIO, OUTBOX_TURNS, TEXT, TOOL, Outbox


@pytest.mark.parametrize("model, name, typed", [
    ("gemini-3.8-live", "3.8 Live", CLIENT_CONTENT),
    ("models/gemini-3.8-live-extended-thinking", "3.8 Live", CLIENT_CONTENT),
    ("gemini-3.1-flash-live-preview", "3.1 Flash Live", REALTIME_TEXT),
    ("gemini-3.1-flash-live-002", "3.1 Flash Live", REALTIME_TEXT),
    ("gemini-2.5-flash-native-audio-preview-12-2025", "2.5 native audio", CLIENT_CONTENT),
    ("gemini-live-2.5-flash-native-audio", "2.5 native audio", CLIENT_CONTENT),
])
def test_known_ids_get_their_generations_rules(model, name, typed):
    generation, known = generation_for(model)
    assert known and generation.name == name and generation.typed_turn == typed


def test_unknown_ids_get_the_newest_rules():
    assert generation_for("gemini-4.0-live") == (NEWEST, False)
    assert NEWEST is GENERATIONS[0] and NEWEST.non_blocking_tools and NEWEST.thinking is None


def test_no_generation_sends_a_field_it_refuses():
    for generation in GENERATIONS:
        assert not (generation.thinking is not None and "thinking_config" in generation.refuses), generation.name


def api_error(code: int, message: str) -> errors.APIError:
    return errors.APIError(code, {"error": {"message": message, "status": ""}})


def test_not_found_names_the_model_and_the_current_ids():
    reason = api_error(1008, "models/gemini-x is not found for API version v1beta, or is not supported for bidi")
    failure = failures.refusal(reason, established=False, model="gemini-x")
    assert "'gemini-x' is not served" in failure and "gemini-3.8-live" in failure


def test_a_vertex_not_found_cut_at_the_close_frame_limit_is_recognised():
    reason = api_error(1008, "Publisher Model `projects/p/locations/us-central1/publishers/google/models/gemini-2.5-fl")
    assert "is not served" in failures.refusal(reason, established=False, model="gemini-2.5-fl")


def test_a_refused_setup_field_is_named():
    reason = api_error(1007, 'Invalid JSON payload received. Unknown name "thinkingConfig" at \'setup.generation_config\'')
    assert "setup field 'thinkingConfig' refused" in failures.refusal(reason, established=False, model="m")


def test_only_setup_refusals_stop_the_retries():
    assert failures.refusal(api_error(1008, "GoAway deadline missed"), established=True, model="m") is None
    assert failures.refusal(api_error(1011, "Internal error occurred."), established=False, model="m") is None
    assert failures.refusal("go_away", established=True, model="m") is None
    assert failures.refusal(api_error(1008, "API key not valid."), established=False, model="m") == "1008: API key not valid."


def test_backoff_grows_and_is_capped():
    assert 0.25 <= failures.backoff(1) <= 0.75
    assert failures.backoff(30) <= failures.BACKOFF_MAX * 1.5


async def test_outbox_order_bounds_and_cancellation():
    outbox = Outbox()
    assert outbox.put_audio(b"a0") and outbox.put_turn("hello")
    assert (await outbox.next()).kind == TEXT  # turns go before audio
    responses = [types.FunctionResponse(id="1", name="trigger_gesture", response={}),
                 types.FunctionResponse(id="2", name="trigger_gesture", response={})]
    outbox.put_tool_responses(responses)
    assert (await outbox.next()).kind == TOOL  # tool responses jump the queue
    assert outbox.cancel_tool_responses({"1"}) == 1 and [r.id for r in (await outbox.next()).payload] == ["2"]
    assert outbox.cancel_tool_responses({"2"}) == 1
    turn = await outbox.next()
    outbox.sent(turn)
    assert (await outbox.next()).kind == AUDIO
    for _ in range(OUTBOX_TURNS):
        assert outbox.put_turn("more")
    assert not outbox.put_turn("one too many")
    for n in range(OUTBOX_AUDIO):
        outbox.put_audio(bytes([n % 256]))
    assert outbox.audio_dropped == 1


async def test_outbox_waits_until_something_arrives():
    outbox = Outbox()
    with trio.move_on_after(0.1) as scope:
        await outbox.next()
    assert scope.cancelled_caught
    async def put_later():
        await trio.sleep(0.01)
        outbox.put_turn("now")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(put_later)
        assert (await outbox.next()).payload == "now"


# -- the receiver, fed real LiveServerMessages ------------------------------------------------------------------------


class FakeRenderer:
    def __init__(self):
        self.pushed, self.flushes = 0, 0

    async def push_audio(self, samples):
        self.pushed += len(samples)
        return True

    def flush(self):
        self.flushes += 1


class FakeControls:
    def __init__(self):
        self.gestures, self.interrupts = [], []

    def gesture(self, name, source):
        self.gestures.append(name)

    def interrupt(self, source):
        self.interrupts.append(source)


def make_receiver(model="gemini-3.8-live"):
    import prometheus_client

    from avatard.brains.gemini.receiver import Receiver
    from avatard.brains.gemini.speech import ModelSpeech
    from avatard.brains.gemini.transcripts import Transcripts
    from avatard.brains.keyword_gestures import KeywordGestures
    from avatard.core.events import EventBus
    from avatard.core.latency import LatencyMeter
    events, renderer, controls, outbox = EventBus(), FakeRenderer(), FakeControls(), Outbox()
    latency = LatencyMeter(events, prometheus_client.CollectorRegistry())
    transcripts = Transcripts(events, KeywordGestures(cooldown=0), lambda name: controls.gesture(name, "test"))
    generation, _ = generation_for(model)
    receiver = Receiver(generation=generation, speech=ModelSpeech(renderer, latency), transcripts=transcripts,
                        outbox=outbox, controls=controls, name="gemini")
    return receiver, renderer, controls, outbox, transcripts


def message(**fields) -> types.LiveServerMessage:
    return types.LiveServerMessage.model_validate(fields)


AUDIO_PART = {"inline_data": {"data": b"\x10\x00" * 960, "mime_type": "audio/pcm;rate=24000"}}


async def test_every_field_of_one_message_is_handled():
    receiver, renderer, controls, outbox, _ = make_receiver()
    await receiver.handle_message(message(server_content={}, usage_metadata={"prompt_token_count": 7}))
    assert not receiver.turn_open and receiver.prompt_tokens == 7, "a usage-only message is not a turn"
    await receiver.handle_message(message(
        tool_call={"function_calls": [{"id": "c1", "name": "trigger_gesture", "args": {"gesture": "nod_agree"}}]},
        server_content={"model_turn": {"parts": [AUDIO_PART, AUDIO_PART]}, "output_transcription": {"text": "Sure"}}))
    assert controls.gestures == ["nod_agree"] and receiver.turn_open
    assert renderer.pushed > 640, "both parts played (less the resampler's filter delay)"
    (response,) = (await outbox.next()).payload
    assert response.id == "c1" and response.scheduling == types.FunctionResponseScheduling.SILENT
    await receiver.handle_message(message(
        server_content={"generation_complete": True, "turn_complete": True},
        usage_metadata={"prompt_token_count": 3, "response_token_count": 11},
        session_resumption_update={"new_handle": "h2", "resumable": True}))
    assert not receiver.turn_open and receiver.handle == "h2"
    assert renderer.pushed >= 2 * 960 * 2 // 3, "the whole answer played: the resampler's look-ahead came at its end"
    assert (receiver.prompt_tokens, receiver.response_tokens) == (10, 11)


async def test_a_turn_without_audio_pushes_nothing_at_its_end():
    receiver, renderer, _, _, _ = make_receiver()
    await receiver.handle_message(message(server_content={"output_transcription": {"text": "Hm"}}))
    await receiver.handle_message(message(server_content={"generation_complete": True, "turn_complete": True}))
    assert renderer.pushed == 0 and renderer.flushes >= 1, "no flush silence for the avatar to speak"


async def test_a_cut_answer_plays_neither_its_rest_nor_its_look_ahead():
    receiver, renderer, _, _, _ = make_receiver()
    await receiver.handle_message(message(server_content={"model_turn": {"parts": [AUDIO_PART]}}))
    played = renderer.pushed
    receiver.interrupt()  # an operator or a browser cut the answer here
    await receiver.handle_message(message(server_content={"model_turn": {"parts": [AUDIO_PART]}}))
    await receiver.handle_message(message(server_content={"generation_complete": True, "turn_complete": True}))
    assert renderer.pushed == played
    await receiver.handle_message(message(server_content={"model_turn": {"parts": [AUDIO_PART]}}))
    assert renderer.pushed > played, "the next answer plays"


async def test_a_cancelled_call_is_not_answered_and_blocking_generations_get_no_scheduling():
    receiver, _, _, outbox, _ = make_receiver("gemini-3.1-flash-live-preview")
    await receiver.handle_message(message(
        tool_call={"function_calls": [{"id": "c1", "name": "trigger_gesture", "args": {"gesture": "nod_agree"}},
                                      {"id": "c2", "name": "launch_rockets", "args": {}}]}))
    responses = (await outbox.next()).payload
    assert [r.scheduling for r in responses] == [None, None] and responses[1].response["ok"] is False
    await receiver.handle_message(message(tool_call_cancellation={"ids": ["c1", "c2"]}))
    with trio.move_on_after(0.05) as scope:
        await outbox.next()
    assert scope.cancelled_caught, "nothing left to send"
