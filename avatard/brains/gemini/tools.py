"""The functions the model may call (one: ``trigger_gesture``), declared and answered as each generation wants.

On a generation with NON_BLOCKING calls (3.8) the gesture is declared ``behavior: NON_BLOCKING`` and answered
with ``scheduling: SILENT``: a gesture needs no new speech, and the model keeps talking while it plays
(live-tools guide: "SILENT: do not interrupt or trigger new generation"). Elsewhere the call blocks the model's
answer, so it is answered at once, ahead of everything else in the outbox.
"""

from __future__ import annotations

import logging

from ...errors import Refused
from .generations import Generation

logger = logging.getLogger("avatard.brain.gemini.tools")

GESTURE_TOOL = "trigger_gesture"


def declarations(generation: Generation, gestures: list[str]):
    from google.genai import types
    return [types.Tool(function_declarations=[types.FunctionDeclaration(
        name=GESTURE_TOOL,
        description="Make the avatar perform a gesture, e.g. wave hello or give a thumbs up.",
        behavior=types.Behavior.NON_BLOCKING if generation.non_blocking_tools else None,
        parameters=types.Schema(type=types.Type.OBJECT, required=["gesture"], properties={
            "gesture": types.Schema(type=types.Type.STRING, enum=gestures)}))])]


def answer(generation: Generation, tool_call, gesture) -> list:
    """Run every call of a ``tool_call`` now; return the FunctionResponses to send. ``gesture(name)`` plays one."""
    from google.genai import types
    scheduling = types.FunctionResponseScheduling.SILENT if generation.non_blocking_tools else None
    responses = []
    for call in tool_call.function_calls or ():
        if call.name == GESTURE_TOOL:
            name = (call.args or {}).get("gesture")
            try:
                gesture(str(name))
                result = {"ok": True, "gesture": name}
            except Refused as exc:
                result = {"ok": False, "error": str(exc)}
        else:
            result = {"ok": False, "error": f"unknown function {call.name!r}"}
        responses.append(types.FunctionResponse(id=call.id, name=call.name, response=result, scheduling=scheduling))
    return responses
