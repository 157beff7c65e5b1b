"""Fetching an agent's gestures from a real local HTTP server shaped like bitHuman's Dynamics API."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trio

from avatard.renderers.dynamics import fetch_gestures


@pytest.fixture
def api():
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("api-secret")))
            if self.headers.get("api-secret") != "good-secret":
                self.send_response(401)
                self.end_headers()
                return
            if self.path.endswith("/slow"):
                threading.Event().wait(8)
            body = json.dumps({"success": True, "data": {"gestures": {"wave": "https://x/w.mp4", "bow": "https://x/b.mp4"}}})
            if self.path.endswith("/odd"):
                body = json.dumps({"success": True, "data": {"gestures": ["not", "a", "map"]}})
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


async def test_fetches_gesture_names_with_the_secret_header(api):
    url, seen = api
    assert await fetch_gestures("agent 7", "good-secret", url) == ["bow", "wave"]
    assert seen == [("/v1/dynamics/agent%207", "good-secret")]


async def test_refusal_odd_json_and_timeout_fall_back(api, caplog):
    url, _ = api
    assert await fetch_gestures("a1", "bad-secret", url) is None
    assert await fetch_gestures("odd", "good-secret", url) is None
    with trio.fail_after(8):
        assert await fetch_gestures("slow", "good-secret", url) is None
    assert await fetch_gestures("a1", "good-secret", "http://127.0.0.1:9") is None
    assert "using the default gestures" in caplog.text
    assert "good-secret" not in caplog.text and "bad-secret" not in caplog.text
