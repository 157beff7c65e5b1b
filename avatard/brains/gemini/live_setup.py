"""The Live session's setup (``LiveConnectConfig``), built from the config and the model generation's rules."""

from __future__ import annotations

from .generations import Generation
from .tools import declarations

# Added to the instructions when a camera is configured, so the model uses the pictures it gets.
SEES_INSTRUCTIONS = ("You can see: pictures from a camera in front of you arrive while you talk. When asked what "
                     "you see, what someone holds, or to read something, answer from the newest picture.")


def connect_config(generation: Generation, config, gestures: list[str], handle: str | None):
    """The setup for one connection. ``gestures`` are read per connection (bitHuman learns its agent's gestures
    late); ``handle`` resumes the session when set. Fields a generation refuses are never sent (see
    :mod:`.generations`): no thinking_config unless the generation's row names one, and neither affective dialog
    nor proactivity anywhere (3.8 has them always on and refuses both, 3.1 has neither, 2.5 has them opt-in)."""
    from google.genai import types
    return types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO],
        speech_config=types.SpeechConfig(voice_config=types.VoiceConfig(
            prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name=config.gemini_voice))),
        system_instruction=types.Content(role="user", parts=[types.Part(
            text=f"{config.instructions}\n\n{SEES_INSTRUCTIONS}" if config.camera else config.instructions)]),
        input_audio_transcription=types.AudioTranscriptionConfig(),
        output_audio_transcription=types.AudioTranscriptionConfig(),
        session_resumption=types.SessionResumptionConfig(handle=handle),
        context_window_compression=types.ContextWindowCompressionConfig(sliding_window=types.SlidingWindow()),
        thinking_config=types.ThinkingConfig(**generation.thinking) if generation.thinking is not None else None,
        tools=declarations(generation, gestures),
    )
