"""The google-genai client, for the Gemini API (an API key) or Vertex AI (a project, a location and Application
Default Credentials), with ``--gemini-base-url`` and ``--gemini-ca-file`` applied in both modes.

Every choice is passed to ``genai.Client`` explicitly (``vertexai``, ``api_key`` or ``credentials``), so the SDK's
own reading of the environment (GOOGLE_GENAI_USE_VERTEXAI, GOOGLE_API_KEY, GOOGLE_CLOUD_PROJECT, ...) cannot
pick another mode than the one the config and the start-up log say. In Vertex mode the credentials are loaded
here, once, with ``google.auth.default`` (GOOGLE_APPLICATION_CREDENTIALS, else gcloud's, else the metadata
server); the SDK refreshes the bearer token through them before each connection (google-genai
``_api_client._async_access_token``), and the Live socket carries ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import os
import ssl

import certifi

from ...errors import BrainFailed

# Vertex AI's scope for Gemini (the SDK's load_auth asks for the same).
VERTEX_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)

# The Live socket does not offer permessage-deflate (websockets offers it unless told ``compression=None``).
# Audio is base64 PCM, which deflate only takes back to ~74 % of its size, and the zlib work sits on the reply's
# critical path: every model message inflated in the bridge's thread before the SDK parses it, every microphone
# message deflated on its way out. Measured against the Live test server (websockets' own server, which accepts
# the extension when offered), 20 instant answers of ~59 messages, CPU per answer (p50): the SDK's receiving
# 13.1 ms with it, 7.0 without; the server's sending 11.2 and 3.9 (bench/README.md has what (a) gained). The price
# is ~36 % more bytes: down while the model speaks (~0.5 instead of ~0.38 Mbit/s), up while a microphone streams
# (~0.34 instead of ~0.25). The SDK passes on any ``async_client_args`` key its websocket ``connect`` accepts and
# drops it for its HTTP clients (google-genai ``_api_client._ensure_websocket_ssl_ctx``, ``_ensure_httpx_ssl_ctx``).
LIVE_SOCKET_ARGS = {"compression": None}


def load_credentials():
    """Application Default Credentials for Vertex; BrainFailed (naming where ADC looked, never a key) if none."""
    import google.auth
    import google.auth.exceptions
    try:
        credentials, _ = google.auth.default(scopes=list(VERTEX_SCOPES))
    except google.auth.exceptions.DefaultCredentialsError as exc:
        # The message names the file or the lookup that failed; a service-account key is never part of it.
        raise BrainFailed(f"no Google Cloud credentials for Vertex AI: {exc}") from None
    return credentials


def make_client(config, credentials=None):
    """One client for the life of the daemon: dropping clients schedules aclose() on whatever loop runs."""
    from google import genai
    from google.genai import types
    options = {"async_client_args": dict(LIVE_SOCKET_ARGS)}
    if config.gemini_base_url:
        options["base_url"] = config.gemini_base_url
    if config.gemini_ca_file:
        # Add the CA to the trust the SDK would use anyway (SSL_CERT_FILE, else certifi), never replace it.
        context = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or certifi.where())
        context.load_verify_locations(cafile=config.gemini_ca_file)
        options["async_client_args"]["ssl"] = context
    http_options = types.HttpOptions(**options)
    if config.vertex:
        return genai.Client(vertexai=True, project=config.gcp_project, location=config.gcp_location,
                            credentials=credentials, http_options=http_options)
    return genai.Client(vertexai=False, api_key=config.gemini_api_key, http_options=http_options)
