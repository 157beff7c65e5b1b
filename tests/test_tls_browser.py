"""Issue 13, TLS: a real headless Chromium on ``https://avatar.test:PORT/`` and on plain ``http://``.

``--host-resolver-rules`` maps ``avatar.test`` to 127.0.0.1, so the page is not on localhost and its
secure context comes from TLS alone, as on a tablet on the LAN. The browser trusts the daemon's
self-signed certificate by its key's fingerprint (``--ignore-certificate-errors-spki-list``, the
command-line form of "I checked the fingerprint"; Chromium honours it because Playwright runs it with
its own ``--user-data-dir``), and a daemon with any other key is refused.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re

import pytest
from cryptography.hazmat.primitives import serialization
from playwright.sync_api import Browser, Error, expect, sync_playwright
from test_browser import CHROMIUM, CHROMIUM_ARGS, WAIT_MS

from avatard.tls import certificate, self_signed

NAME = "avatar.test"


def spki_pin(cert_path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)): the form --ignore-certificate-errors-spki-list takes."""
    spki = certificate.read_certificate(str(cert_path)).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    """The state directory the TLS daemons share: its certificate is made here, before Chromium starts."""
    directory = tmp_path_factory.mktemp("state")
    self_signed.load_or_create(str(directory), "127.0.0.1")
    return directory


@pytest.fixture(scope="module")
def browser(state, tmp_path_factory) -> Browser:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: the browser tests need Debian's chromium", pytrace=False)
    home = tmp_path_factory.mktemp("chromium-home")
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_CACHE_HOME": str(home / ".cache")}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, env=env, args=[
            *CHROMIUM_ARGS,
            f"--host-resolver-rules=MAP {NAME} 127.0.0.1",
            f"--ignore-certificate-errors-spki-list={spki_pin(state / self_signed.CERT_FILE)}",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",  # a beeping microphone
        ])
        yield browser
        browser.close()


@contextlib.contextmanager
def new_page(browser: Browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    failures: list[str] = []
    page.on("pageerror", lambda exc: failures.append(f"uncaught: {exc}"))
    page.on("console", lambda m: failures.append(f"console.error: {m.text}") if m.type == "error" else None)
    yield page
    context.close()
    assert not failures, failures


def wait_streaming(page) -> None:
    page.wait_for_function("avatard.connection === 'connected' && avatard.framesDrawn >= 25", timeout=WAIT_MS)


def test_https_page_is_a_secure_context_streams_and_takes_the_microphone(browser, daemon_factory, state):
    daemon = daemon_factory("--tls", "self-signed", env={"STATE_DIRECTORY": str(state)})
    assert "made a self-signed certificate" not in daemon.log(), "the pinned certificate is reused"
    port = daemon.port
    with new_page(browser) as page:
        page.goto(f"https://{NAME}:{port}/?transport=ws")  # WebRTC in a namespace: test_webrtc.py
        wait_streaming(page)
        assert page.evaluate("window.isSecureContext") is True
        assert page.evaluate("avatard.ws.url") == f"wss://{NAME}:{port}/ws"
        page.wait_for_function("avatard.playerReady && avatard.audioContextState === 'running'", timeout=WAIT_MS)
        assert page.evaluate("avatard.micUnavailable") is None
        expect(page.locator("#talk")).to_be_enabled()
        expect(page.locator("#talk-label")).to_have_text("Talk")
        expect(page.locator("#talk-help")).to_have_count(0)
        page.click("#talk")
        page.wait_for_function("avatard.micActive && avatard.micChunksSent >= 25", timeout=WAIT_MS)
        page.click("#talk")
        page.wait_for_function("!avatard.micActive", timeout=WAIT_MS)
    assert daemon.status()["tls_failures"] == 0

    # Someone who types http:// is sent to the https page.
    with new_page(browser) as page:
        page.goto(f"http://{NAME}:{port}/?transport=ws")
        wait_streaming(page)
        assert page.url == f"https://{NAME}:{port}/?transport=ws", "the redirect keeps the path and query"
    assert daemon.status()["plain_http_to_tls"] == 1


def test_a_certificate_with_another_key_is_refused(browser, daemon_factory, tmp):
    other = daemon_factory("--tls", "self-signed", env={"STATE_DIRECTORY": str(tmp / "other")})
    with new_page(browser) as page, pytest.raises(Error, match="ERR_CERT_"):
        page.goto(f"https://{NAME}:{other.port}/?transport=ws")


def test_plain_http_page_explains_why_talk_needs_https(browser, daemon_factory):
    daemon = daemon_factory()
    with new_page(browser) as page:
        page.goto(f"http://{NAME}:{daemon.port}/?transport=ws")
        wait_streaming(page)  # watching and listening still work, through the buffer player
        assert page.evaluate("window.isSecureContext") is False
        expect(page.locator("#talk-label")).to_have_text("Talk needs HTTPS")
        expect(page.locator("#talk")).to_have_attribute("aria-disabled", "true")
        help_text = re.compile(r"^The microphone needs HTTPS: browsers allow it only on https:// pages .*"
                               r"--tls self-signed")
        expect(page.locator("#talk-help")).to_be_visible()
        expect(page.locator("#talk-help")).to_have_text(help_text)
        page.click("#talk", force=True)  # a person can click it; Playwright waits on aria-disabled unless forced
        expect(page.locator(".toast").last).to_have_text(help_text)
        assert page.evaluate("avatard.micActive") is False
