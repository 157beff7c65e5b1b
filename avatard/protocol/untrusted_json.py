"""Parsing JSON that a peer sent (control socket lines, WebSocket messages)."""

from __future__ import annotations

import json

from ..errors import ProtocolError


def json_object(data: str | bytes, what: str, shape_code: str) -> dict:
    """The JSON object in ``data``; ProtocolError ``bad_json`` or ``shape_code`` for anything else.

    Not only JSONDecodeError: invalid UTF-8 and integers over 4300 digits raise plain ValueErrors, and deep
    nesting ("[[[[..." well within any size limit) a RecursionError. Any of them escaping would end the
    task serving the peer, and with it its nursery.
    """
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("bad_json", f"{what} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(shape_code, f"{what} must be a JSON object")
    return obj
