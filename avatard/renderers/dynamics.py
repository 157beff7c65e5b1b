"""bitHuman's Dynamics API: the gestures an agent has (``--agent-id`` with the bitHuman secret).

``GET {api}/v1/dynamics/{agent_id}`` with header ``api-secret`` returns
``{"success": true, "data": {"gestures": {name: video_url, ...}}}``. The names are the actions the bitHuman
renderer can play. Any failure (network, timeout, refusal, odd JSON) is logged and the defaults are
used: gestures are a nicety, never a reason not to start.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request

import trio

logger = logging.getLogger("avatard.dynamics")

DEFAULT_API_URL = "https://api.bithuman.ai"
FETCH_TIMEOUT = 5.0  # start-up waits at most this long for the gesture list
MAX_RESPONSE_BYTES = 1 << 20  # a gesture list is a few KiB; refuse to buffer a runaway response


def _get(url: str, api_secret: str) -> dict:
    request = urllib.request.Request(url, headers={"api-secret": api_secret, "accept": "application/json"})
    with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as response:
        return json.loads(response.read(MAX_RESPONSE_BYTES))


def parse_gestures(body) -> list[str]:
    """The gesture names of a Dynamics response; ValueError if it is not the documented shape."""
    if not isinstance(body, dict) or not body.get("success"):
        raise ValueError(f"the API did not report success: {str(body)[:200]}")
    gestures = (body.get("data") or {}).get("gestures")
    if not isinstance(gestures, dict) or not all(isinstance(name, str) for name in gestures):
        raise ValueError("data.gestures is not an object of gesture names")
    return sorted(gestures)


async def fetch_gestures(agent_id: str, api_secret: str, api_url: str = DEFAULT_API_URL) -> list[str] | None:
    """The agent's gesture names, or None (logged) if they cannot be had."""
    url = f"{api_url.rstrip('/')}/v1/dynamics/{urllib.parse.quote(agent_id, safe='')}"
    try:
        with trio.fail_after(FETCH_TIMEOUT + 1):
            body = await trio.to_thread.run_sync(_get, url, api_secret, abandon_on_cancel=True)
        names = parse_gestures(body)
    except (OSError, ValueError, trio.TooSlowError) as exc:  # URLError and HTTPError are OSErrors
        logger.warning("could not fetch gestures of agent %s (%s); using the default gestures", agent_id, exc)
        return None
    logger.info("agent %s has gestures: %s", agent_id, ", ".join(names) or "none")
    return names
