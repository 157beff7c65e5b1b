"""What each generation of Gemini Live models accepts and does, in one table keyed by model id.

Source: ``/work/shared/spec/gemini_live_2026.md`` ("How the generations differ"), which collects the Gemini API
live guide, the models and deprecations pages, the 2025-12-12 changelog and the Vertex AI Live guide. The next
generation is a new row in :data:`GENERATIONS`; nothing else in the brain names a model.

An id that matches no row gets the newest generation's rules (:func:`generation_for`): a new id is far more likely
to be a successor than an old model, and the start-up log says which rules were picked.
"""

from __future__ import annotations

import attrs

# How a typed user turn (text_input, ``avatarctl ask``) reaches the model.
CLIENT_CONTENT = "client_content"  # send_client_content(turns=..., turn_complete=True)
REALTIME_TEXT = "realtime_text"  # send_realtime_input(text=...): 3.1 refuses client_content after the first answer

# Setup fields (LiveConnectConfig names) a generation refuses with close 1007.
THINKING_CONFIG = "thinking_config"
AFFECTIVE_DIALOG = "enable_affective_dialog"
PROACTIVITY = "proactivity"


@attrs.frozen(kw_only=True)
class Generation:
    """The rules of one generation. ``models`` are matched exactly, ``prefixes`` as the start of an id."""

    name: str
    models: tuple[str, ...]
    prefixes: tuple[str, ...] = ()
    typed_turn: str = attrs.field(validator=attrs.validators.in_((CLIENT_CONTENT, REALTIME_TEXT)))
    # The thinking knob avatard sets for the lowest latency, as LiveConnectConfig.thinking_config keyword
    # arguments; None: send no thinking_config at all (3.8 refuses it).
    thinking: dict | None
    # Setup fields this generation refuses: avatard never sends them (the test server refuses them the same way).
    refuses: frozenset[str]
    # Function calls run NON_BLOCKING (the model keeps talking) and a FunctionResponse may carry ``scheduling``.
    non_blocking_tools: bool
    # How a camera frame is sent: send_realtime_input(video=Blob(mime_type=video_mime)), "JPEG frames <= 1 fps"
    # on every generation so far (the spec's "video input" row); the rate is kept by avatard.core.vision.
    video_mime: str = "image/jpeg"
    # Ids this generation's docs call current: named in the failure when a server refuses a model.
    current: tuple[str, ...] = ()

    def matches(self, model: str) -> bool:
        model = model.removeprefix("models/")
        return model in self.models or model.startswith(self.prefixes)


# Newest first. Rows from the spec's table "How the generations differ".
GENERATIONS: tuple[Generation, ...] = (
    Generation(
        name="3.8 Live",
        models=("gemini-3.8-live", "gemini-3.8-live-extended-thinking"),
        prefixes=("gemini-3.8-",),
        typed_turn=CLIENT_CONTENT,  # with an explicit role it works for the whole session
        thinking=None,  # "no thinking_config (refused)"
        refuses=frozenset({THINKING_CONFIG, AFFECTIVE_DIALOG, PROACTIVITY}),  # proactive audio is always on
        non_blocking_tools=True,  # NON_BLOCKING by default; responses carry scheduling
        current=("gemini-3.8-live",),
    ),
    Generation(
        name="3.1 Flash Live",
        models=("gemini-3.1-flash-live-preview",),
        prefixes=("gemini-3.1-",),
        typed_turn=REALTIME_TEXT,  # client_content after the first model turn is refused with 1007
        thinking={"thinking_level": "MINIMAL"},  # thinking_level, minimal (its default, said explicitly)
        refuses=frozenset({AFFECTIVE_DIALOG, PROACTIVITY}),  # "not supported"
        non_blocking_tools=False,  # calls block until answered
        current=("gemini-3.1-flash-live-preview",),
    ),
    Generation(
        name="2.5 native audio",
        models=("gemini-2.5-flash-native-audio-preview-12-2025", "gemini-live-2.5-flash-native-audio"),
        prefixes=("gemini-2.5-", "gemini-live-2.5-"),
        typed_turn=CLIENT_CONTENT,
        thinking={"thinking_budget": 0},  # thinking_budget; 0 = answer without thinking, the quickest first audio
        refuses=frozenset(),  # affective dialog and proactive audio are opt-in; avatard opts in to neither
        non_blocking_tools=False,
        current=("gemini-2.5-flash-native-audio-preview-12-2025", "gemini-live-2.5-flash-native-audio (Vertex)"),
    ),
)
NEWEST = GENERATIONS[0]


def generation_for(model: str) -> tuple[Generation, bool]:
    """The rules for ``model`` and whether they were looked up (True) or defaulted to the newest (False)."""
    for generation in GENERATIONS:
        if generation.matches(model):
            return generation, True
    return NEWEST, False


def current_models() -> str:
    """The ids to suggest when a server refuses a model, newest first."""
    return ", ".join(model for generation in GENERATIONS for model in generation.current)
