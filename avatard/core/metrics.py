"""``GET /metrics``: the daemon's numbers in Prometheus text format (prometheus-client).

Counters and gauges are read at scrape time from the same sources ``avatarctl status`` reads
(:meth:`Hub.status`), so the two never disagree; latency histograms live in :mod:`avatard.core.latency`.
The registry is private to the daemon (no process-global default registry).
"""

from __future__ import annotations

import prometheus_client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST

# status() key -> (metric name, help); counters only ever grow.
COUNTERS = {
    "frames_rendered": ("avatard_frames_rendered", "Frames the renderer produced."),
    "frames_dropped": ("avatard_frames_dropped", "Frames dropped before reaching a sink (renderer queue or a sink's channel)."),
    "video_dropped": ("avatard_client_video_dropped", "Video frames dropped for slow WebSocket clients."),
    "bytes_sent": ("avatard_bytes_sent", "Bytes sent to WebSocket clients."),
    "turns": ("avatard_turns", "User turns."),
    "interrupts": ("avatard_interrupts", "Interrupts (barge-in, clients, operators)."),
    "reconnects": ("avatard_brain_reconnects", "Times the brain's connection was re-established."),
    "prompt_tokens": ("avatard_brain_prompt_tokens", "Prompt (input) tokens the brain's model reported (Live sessions are billed by tokens)."),
    "response_tokens": ("avatard_brain_response_tokens", "Response (output) tokens the brain's model reported."),
    "events_dropped": ("avatard_events_dropped", "Events dropped for subscribers that did not read."),
    "camera_frames_sent": ("avatard_camera_frames_sent", "Pictures handed to the brain (camera frames and stills)."),
    "camera_frames_dropped": ("avatard_camera_frames_dropped", "Camera frames dropped: the brain's input queue was full."),
    "model_video_dropped": ("avatard_brain_video_dropped", "Camera frames the brain dropped (not connected, or stale)."),
    "tls_failures": ("avatard_tls_handshake_failures", "TLS handshakes that failed or timed out (each closed only its connection)."),
    "plain_http_to_tls": ("avatard_tls_plain_http_requests", "Plain-HTTP requests to the TLS port (redirected to https)."),
}
# Presence counters and gauges, from status()["presence"] when the daemon can see.
PRESENCE_COUNTERS = {
    "arrivals": ("avatard_presence_arrivals", "People who arrived in front of the camera."),
    "departures": ("avatard_presence_departures", "People who left the camera's view."),
}


# Per Janus server, from status()["janus"] when the daemon broadcasts (avatard.broadcast).
JANUS_COUNTERS = {
    "packets_sent": ("avatard_janus_packets_sent", "RTP packets sent to a Janus server."),
    "packets_dropped": ("avatard_janus_packets_dropped", "RTP packets not sent to a Janus server (away, no mountpoint yet, or its queue full)."),
    "recreations": ("avatard_janus_recreations", "Times the mountpoint was re-created on a Janus server (after it restarted)."),
}


def _janus(servers: list[dict]):
    labels = ["server", "url"]
    connected = GaugeMetricFamily("avatard_janus_connected", "1 while our mountpoint exists on the Janus server.", labels=labels)
    for server in servers:
        connected.add_metric([server["name"], server["url"]], int(server["connected"]))
    yield connected
    mountpoint = GaugeMetricFamily("avatard_janus_mountpoint", "Id of our mountpoint on the Janus server (0 while it has none).",
                                   labels=labels)
    for server in servers:
        mountpoint.add_metric([server["name"], server["url"]], server["mountpoint"] or 0)
    yield mountpoint
    for key, (name, doc) in JANUS_COUNTERS.items():
        family = CounterMetricFamily(name, doc, labels=labels)
        for server in servers:
            family.add_metric([server["name"], server["url"]], server[key])
        yield family


# status()["client_list"][i]["webrtc"] key -> (metric name, help), and the factor to base units.
VIEWER_GAUGES = (
    ("bitrate_kbps", "avatard_viewer_bitrate_bps", "Bits per second sent to a WebRTC viewer (audio + video)."),
    ("rtt_ms", "avatard_viewer_rtt_seconds", "Round-trip time to a WebRTC viewer (RTCP receiver reports)."),
    ("packets_lost", "avatard_viewer_packets_lost", "RTP packets a WebRTC viewer reported lost."),
    ("fraction_lost", "avatard_viewer_fraction_lost", "Fraction of packets lost in a WebRTC viewer's last report."),
)
VIEWER_SCALE = {"bitrate_kbps": 1000, "rtt_ms": 0.001}


# Local mode's echo canceller and barge-in, from status()["local_io"] (absent without a microphone).
AEC_COUNTERS = {
    ("echo_canceller", "frames_processed"): ("avatard_aec_frames_processed", "10 ms microphone frames the echo canceller processed."),
    ("microphone", "barge_ins"): ("avatard_barge_ins", "Interrupts made by the local microphone's barge-in detection."),
    ("microphone", "self_interrupts"): ("avatard_self_interrupts", "Barge-ins while nobody but the avatar was talking "
                                        "(judged from the microphone before cancellation against the speaker's signal)."),
    ("microphone", "self_interrupts_prevented"): ("avatard_self_interrupts_prevented", "Speech onsets so judged that "
                                                  "did not interrupt (the echo canceller runs)."),
}
AEC_GAUGES = {
    ("echo_canceller", "aec"): ("avatard_aec_enabled", "1 while acoustic echo cancellation runs on the microphone."),
    ("echo_canceller", "delay_ms"): ("avatard_aec_delay_ms", "Estimated delay of the avatar's echo behind the speaker's signal."),
    ("echo_canceller", "erle_db"): ("avatard_aec_erle_db", "Echo return loss enhancement over the last seconds of echo alone."),
}


class StatusCollector:
    def __init__(self, status) -> None:
        self._status = status

    def collect(self):
        status = self._status()
        for key, (name, doc) in COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=status.get(key) or 0)
        yield GaugeMetricFamily("avatard_clients", "Connected WebSocket clients.", value=status["clients"])
        yield GaugeMetricFamily("avatard_uptime_seconds", "Seconds since start.", value=status["uptime_s"])
        yield GaugeMetricFamily("avatard_speaking", "1 while the avatar speaks.", value=int(status["speaking"]))
        depth = GaugeMetricFamily("avatard_client_queue_depth", "Messages queued for each WebSocket client.", labels=["client"])
        for client in status["client_list"]:
            depth.add_metric([client["id"]], client["queued"])
        yield depth
        # Each WebRTC viewer (a WebSocket client whose media go over its peer), from aiortc's getStats.
        viewers = {key: GaugeMetricFamily(name, doc, labels=["client", "transport"]) for key, name, doc in VIEWER_GAUGES}
        for client in status["client_list"]:
            rtc = client.get("webrtc")
            if rtc is None:
                continue
            for key, family in viewers.items():
                value = rtc.get(key)
                if value is not None:
                    family.add_metric([client["id"], client["transport"]], value * VIEWER_SCALE.get(key, 1))
        yield from viewers.values()
        yield GaugeMetricFamily("avatard_camera_to_model", "1 while camera frames are being sent to the model.",
                                value=int(status.get("camera_to_model", False)))
        presence = status.get("presence")
        if presence is not None:
            for key, (name, doc) in PRESENCE_COUNTERS.items():
                yield CounterMetricFamily(name, doc, value=presence[key])
            yield GaugeMetricFamily("avatard_presence_faces", "Faces in view now (0 when nobody is there).",
                                    value=presence["faces"])
        yield from _tls_metrics(status.get("tls"))
        yield from _janus(status.get("janus") or [])
        brain = GaugeMetricFamily("avatard_brain_connected", "1 while the brain is connected.", labels=["brain"])
        brain.add_metric([status["brain"]], int(status["brain_state"] == "connected"))
        yield brain
        local = status.get("local_io", {})
        for (part, key), (name, doc) in AEC_COUNTERS.items():
            if key in local.get(part, {}):
                yield CounterMetricFamily(name, doc, value=local[part][key])
        for (part, key), (name, doc) in AEC_GAUGES.items():
            if local.get(part, {}).get(key) is not None:  # None: not measured yet (no echo heard)
                yield GaugeMetricFamily(name, doc, value=float(local[part][key]))


def _tls_metrics(tls: dict | None):
    """Whether the server port speaks TLS, and its certificate: fingerprint (a label, as *_info metrics
    carry text) and expiry, for an alert before browsers start refusing it. Never the key."""
    yield GaugeMetricFamily("avatard_tls_enabled", "1 when the server port speaks TLS (https, wss).", value=int(bool(tls)))
    if tls:
        info = GaugeMetricFamily("avatard_tls_certificate_info", "The server's certificate (value 1).",
                                 labels=["sha256", "self_signed"])
        info.add_metric([tls["fingerprint_sha256"], str(tls["self_signed"]).lower()], 1)
        yield info
        yield GaugeMetricFamily("avatard_tls_certificate_expiry_timestamp_seconds",
                                "When the server's certificate expires (Unix time).", value=tls["not_after_unix"])


def make_registry() -> prometheus_client.CollectorRegistry:
    return prometheus_client.CollectorRegistry(auto_describe=True)


def bind(registry: prometheus_client.CollectorRegistry, status) -> None:
    registry.register(StatusCollector(status))


def render(registry: prometheus_client.CollectorRegistry) -> bytes:
    return prometheus_client.generate_latest(registry)
