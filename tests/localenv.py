"""Real devices for local-mode tests: a private PulseAudio with null sinks, a private Xvfb, and tools to
listen to the speaker, talk into the microphone, look at the screen and close a window.

PortAudio reaches PulseAudio through ALSA's "pulse" plugin (libasound2-plugins), exactly as on a
desktop; the daemon is pointed at our server with ``PULSE_SERVER``. Sound the daemon plays lands in the
``avatard_speaker`` null sink, whose monitor we record with ``parec``; sound we ``paplay`` into the
``avatard_mic_feed`` null sink comes out of its monitor, remapped as the default source ``avatard_mic``.

:meth:`Pulse.room` adds the room of a kiosk: the speaker sink's monitor looped (``module-loopback``) into
the microphone's feed, so the microphone hears the avatar some tens of milliseconds late, while a
"visitor" (:class:`Visitor`, one stream open for the room's whole life) still talks straight into the feed. :func:`talk_over` is the scene the
room tests and ``bench/aec.py`` share: the visitor talks over the avatar, and what the daemon made of it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import attrs
import numpy as np

SPEAKER_SINK = "avatard_speaker"
MIC_FEED_SINK = "avatard_mic_feed"
MIC_SOURCE = "avatard_mic"
RATE = 16000
START_TIMEOUT = 10.0
LONG_SENTENCE = ("This is a long sentence that keeps going and going, so that there is plenty of time "
                 "to interrupt it somewhere in the middle of a word. ") * 2
VISITOR_SENTENCE = "Excuse me, where is the lift to the third floor?"

PULSE_CONFIG = f"""
load-module module-native-protocol-unix auth-anonymous=1
load-module module-null-sink sink_name={SPEAKER_SINK}
load-module module-null-sink sink_name={MIC_FEED_SINK}
load-module module-remap-source source_name={MIC_SOURCE} master={MIC_FEED_SINK}.monitor
set-default-sink {SPEAKER_SINK}
set-default-source {MIC_SOURCE}
"""


def require(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    assert not missing, f"missing {missing}: install the packages in scripts/test's APT_PACKAGES"


class Pulse:
    """A private PulseAudio server; ``env`` points clients (the daemon, parec, paplay) at it."""

    def __init__(self) -> None:
        require("pulseaudio", "parec", "paplay", "pactl")
        self.root = Path(tempfile.mkdtemp(prefix="pa-", dir="/tmp"))
        (self.root / "home").mkdir()
        runtime = self.root / "run"
        runtime.mkdir(mode=0o700)
        config = self.root / "default.pa"
        config.write_text(PULSE_CONFIG)
        self.env = {"PULSE_SERVER": f"unix:{runtime}/pulse/native"}
        server_env = dict(os.environ, HOME=str(self.root / "home"), XDG_RUNTIME_DIR=str(runtime), **self.env)
        self.log = open(self.root / "pulseaudio.log", "wb")
        # -n: no default.pa but ours; --exit-idle-time=-1: stay up between tests. Root is fine without
        # --system for a private server like this one (pulseaudio only warns). The sound server runs at a high
        # priority, as a desktop's does (rtkit): starved by a loaded box, its loopback drops blocks and the
        # room's echo path jumps, which no room does (the echo canceller then leaks: a flaky self-interrupt).
        self.proc = subprocess.Popen(["pulseaudio", "--daemonize=no", "--exit-idle-time=-1", "-n", "-F", str(config),
                                      "--log-target=stderr", "--high-priority=yes", "--realtime=yes"],
                                     env=server_env, stdout=self.log, stderr=self.log,
                                     preexec_fn=lambda: os.nice(-11) if os.geteuid() == 0 else None)
        deadline = time.monotonic() + START_TIMEOUT
        while subprocess.run(["pactl", "info"], env=self.client_env(), capture_output=True).returncode != 0:
            assert self.proc.poll() is None, (self.root / "pulseaudio.log").read_text()
            assert time.monotonic() < deadline, "pulseaudio did not start"
            time.sleep(0.1)

    def client_env(self) -> dict:
        return dict(os.environ, **self.env)

    def play(self, path: Path) -> None:
        """Speak ``path`` into the microphone (blocks until played)."""
        subprocess.run(["paplay", "-d", MIC_FEED_SINK, str(path)], env=self.client_env(), check=True, timeout=60)

    @contextlib.contextmanager
    def room(self, latency_ms: int):
        """While inside, the microphone also hears the speaker, ``latency_ms`` later (the loopback's own buffer);
        yields the room's :class:`Visitor`, silent until told to talk.

        The loopback's adaptive rate is off (``adjust_time=0``): both null sinks run on the server's one
        clock, so there is no drift to follow, and with it on the loopback steered its latency towards the
        target by resampling, which made the echo's delay creep (+0.5 ms in 5.5 s, ~90 ppm, in every recording
        of bench/aec.py) -- an echo path that moves all the time, which a room does not, and which cost AEC3's
        double talk ~0.1 of correlation (bench/aec.py's figure: 0.74 -> 0.84, median of 4-7 recordings). Off, the delay holds to 0.1 ms.
        """
        visitor = Visitor(self.client_env())
        loaded = subprocess.run(["pactl", "load-module", "module-loopback", f"source={SPEAKER_SINK}.monitor",
                                 f"sink={MIC_FEED_SINK}", f"latency_msec={latency_ms}", "adjust_time=0",
                                 "source_dont_move=true", "sink_dont_move=true"],
                                env=self.client_env(), capture_output=True, text=True, check=True)
        try:
            yield visitor
        finally:
            visitor.close()
            subprocess.run(["pactl", "unload-module", loaded.stdout.strip()], env=self.client_env(), check=True)

    def listen(self, device: str = f"{SPEAKER_SINK}.monitor") -> Monitor:
        """Record the speaker (by default) or another source, e.g. :data:`MIC_SOURCE`: what the microphone hears."""
        return Monitor(self.client_env(), device)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


class Visitor:
    """A stream into the microphone's feed that plays silence until :meth:`say` gives it speech (the room's).

    Not a ``paplay`` per utterance: a stream joining the feed sink makes PulseAudio rewind and re-mix it,
    and the room's loopback into the same sink jumped with it -- the echo canceller then leaked the
    avatar's echo just as the visitor began (a self-interrupt on ~1 run in 3 of bench/aec.py). People
    starting to talk do not move a room's echo path. Written in real time, 60 ms ahead of the clock.
    """

    AHEAD = 0.06

    def __init__(self, env: dict) -> None:
        self._proc = subprocess.Popen(["pacat", "--playback", "-d", MIC_FEED_SINK, "--format=s16le", f"--rate={RATE}",
                                       "--channels=1", "--latency-msec=30", "--raw"], env=env, stdin=subprocess.PIPE)
        self._queue: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._said = threading.Event()
        self._said.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write, daemon=True)
        self._thread.start()

    def say(self, samples: np.ndarray) -> threading.Event:
        """Queue ``samples`` (16 kHz); the returned event is set once all of them were handed to the stream."""
        with self._lock:
            self._said = threading.Event()
            self._queue = [samples[i:i + 160] for i in range(0, len(samples), 160)]
            return self._said

    def _write(self) -> None:
        silence = np.zeros(160, np.int16)
        start, written = time.monotonic(), 0
        while not self._stop.is_set():
            ahead = written / RATE - (time.monotonic() - start)
            if ahead > self.AHEAD:
                time.sleep(ahead - self.AHEAD)
                continue
            if ahead < -0.2:  # starved for a while (a loaded box): start the clock again
                start, written = time.monotonic(), 0
            with self._lock:
                chunk = self._queue.pop(0) if self._queue else silence
                if not self._queue:
                    self._said.set()
            try:
                self._proc.stdin.write(chunk.astype("<i2").tobytes())
                self._proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                return
            written += len(chunk)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._proc.kill()
        self._proc.wait()


class Monitor:
    """Records a source (the speaker sink's monitor); every 10 ms chunk is stamped with its arrival time."""

    CHUNK = 160  # samples: 10 ms resolution for the timing measurements

    def __init__(self, env: dict, device: str) -> None:
        self._proc = subprocess.Popen(["parec", "-d", device, "--format=s16le", f"--rate={RATE}",
                                       "--channels=1", "--latency-msec=10", "--raw"], env=env, stdout=subprocess.PIPE)
        self._chunks: list[tuple[float, np.ndarray]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            data = self._proc.stdout.read(self.CHUNK * 2)
            if not data:
                return
            with self._lock:
                self._chunks.append((time.monotonic(), np.frombuffer(data, dtype="<i2").astype(np.int16)))

    def chunks(self, since: float = 0.0) -> list[tuple[float, np.ndarray]]:
        with self._lock:
            return [c for c in self._chunks if c[0] >= since]

    def samples(self, since: float = 0.0) -> np.ndarray:
        chunks = self.chunks(since)
        return np.concatenate([c[1] for c in chunks]) if chunks else np.zeros(0, np.int16)

    def arrival(self, sample: int, since: float = 0.0) -> float:
        """When the chunk holding sample number ``sample`` (counted from ``since``) arrived."""
        at = 0
        for stamp, samples in self.chunks(since):
            at += len(samples)
            if at > sample:
                return stamp
        raise IndexError(f"sample {sample} not recorded yet")

    def wait_for(self, predicate, timeout: float, since: float = 0.0) -> float:
        """Arrival time of the first chunk (after ``since``) for which ``predicate(samples)`` holds."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            chunks = self.chunks(since)
            for stamp, samples in chunks[seen:]:
                if predicate(samples):
                    return stamp
            seen = len(chunks)
            time.sleep(0.01)
        raise TimeoutError(f"the speaker monitor showed no matching sound within {timeout} s")

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait()


def loud(samples: np.ndarray, level: int = 1000) -> bool:
    return len(samples) > 0 and int(np.abs(samples.astype(np.int32)).max()) > level


def quiet(samples: np.ndarray, level: int = 50) -> bool:
    return len(samples) > 0 and int(np.abs(samples.astype(np.int32)).max()) < level


def developed(film: subprocess.Popen, timeout: float = 60.0) -> list[tuple[float, np.ndarray]]:
    """The (monotonic time, BGR picture) pairs a :meth:`Xvfb.film` recorded."""
    data, _ = film.communicate(timeout=timeout)
    assert film.returncode == 0
    width, height = struct.unpack("<II", data[:8])
    size = 8 + width * height * 3
    return [(struct.unpack("<d", data[start:start + 8])[0],
             np.frombuffer(data[start + 8:start + size], np.uint8).reshape(height, width, 3))
            for start in range(8, len(data) - size + 1, size)]


def speech_seconds(samples: np.ndarray, level: float = 300.0) -> float:
    """Seconds of 20 ms blocks whose RMS exceeds ``level`` (speech, not the silence around it)."""
    blocks = samples[: len(samples) // 320 * 320].astype(np.float64).reshape(-1, 320)
    return float((np.sqrt((blocks ** 2).mean(axis=1)) > level).sum() * 0.02)


class Xvfb:
    """A private X server; ``display`` is its DISPLAY value."""

    def __init__(self) -> None:
        require("Xvfb", "xdotool")
        read, write = os.pipe()
        self.proc = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                                     pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(write)
        with os.fdopen(read) as pipe:
            number = pipe.readline().strip()  # Xvfb writes its display number once it accepts clients
        assert number, "Xvfb did not start"
        self.display = f":{number}"

    def env(self) -> dict:
        return {"DISPLAY": self.display}

    def xdotool(self, *args: str, timeout: float = 10.0) -> str:
        result = subprocess.run(["xdotool", *args], env=dict(os.environ, DISPLAY=self.display), capture_output=True,
                                text=True, timeout=timeout)
        assert result.returncode == 0, f"xdotool {args}: {result.stderr}"
        return result.stdout.strip()

    def find_window(self, title: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = subprocess.run(["xdotool", "search", "--onlyvisible", "--name", f"^{title}$"], env=dict(os.environ, DISPLAY=self.display),
                                    capture_output=True, text=True)
            if result.returncode == 0 and result.stdout.split():
                return result.stdout.split()[-1]  # the newest
            time.sleep(0.1)
        raise TimeoutError(f"no window titled {title!r} within {timeout} s")

    def press(self, window: str, key: str) -> None:
        """Focus ``window`` and type ``key`` through XTEST, as a person at the keyboard would."""
        self.xdotool("windowfocus", "--sync", window)
        self.xdotool("key", key)

    def screenshot(self, window: str) -> np.ndarray:
        """The window's pixels (BGR), grabbed from the X server by ffmpeg's x11grab (through PyAV).

        In a child process: PyAV's and OpenCV's wheels each bundle their own libxcb, and once the test
        process has loaded OpenCV's, x11grab in the same process crashes.
        """
        geometry = dict(line.split("=") for line in self.xdotool("getwindowgeometry", "--shell", window).splitlines())
        width, height = int(geometry["WIDTH"]), int(geometry["HEIGHT"])
        grab = ("import av, sys\n"
                f"c = av.open({self.display!r}, format='x11grab', options={{'video_size': '{width}x{height}', "
                f"'grab_x': '{geometry['X']}', 'grab_y': '{geometry['Y']}'}})\n"
                "sys.stdout.buffer.write(next(c.decode(video=0)).to_ndarray(format='bgr24').tobytes())\n")
        result = subprocess.run([sys.executable, "-c", grab], capture_output=True, timeout=30)
        assert result.returncode == 0, result.stderr.decode()
        return np.frombuffer(result.stdout, np.uint8).reshape(height, width, 3)

    def film(self, window: str, seconds: float) -> subprocess.Popen:
        """Start grabbing the window at 50 frames/s for ``seconds``; :func:`developed` reads the result.

        Each frame is stamped with ``time.monotonic()`` (system-wide, so comparable with a Monitor's).
        """
        geometry = dict(line.split("=") for line in self.xdotool("getwindowgeometry", "--shell", window).splitlines())
        width, height = int(geometry["WIDTH"]), int(geometry["HEIGHT"])
        grab = ("import av, sys, time, struct\n"
                f"c = av.open({self.display!r}, format='x11grab', options={{'video_size': '{width}x{height}', "
                f"'grab_x': '{geometry['X']}', 'grab_y': '{geometry['Y']}', 'framerate': '50'}})\n"
                f"end = time.monotonic() + {seconds}\n"
                f"sys.stdout.buffer.write(struct.pack('<II', {width}, {height}))\n"
                "for frame in c.decode(video=0):\n"
                "    now = time.monotonic()\n"
                "    sys.stdout.buffer.write(struct.pack('<d', now) + frame.to_ndarray(format='bgr24').tobytes())\n"
                "    if now > end: break\n")
        return subprocess.Popen([sys.executable, "-c", grab], stdout=subprocess.PIPE)

    def close_window(self, window: str) -> None:
        """Send WM_DELETE_WINDOW, what a window manager sends when the user clicks the close button."""
        x11 = ctypes.CDLL(ctypes.util.find_library("X11") or "libX11.so.6")
        x11.XOpenDisplay.restype = ctypes.c_void_p
        x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
        x11.XInternAtom.restype = ctypes.c_ulong
        x11.XInternAtom.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        x11.XSendEvent.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        x11.XFlush.argtypes = [ctypes.c_void_p]
        x11.XCloseDisplay.argtypes = [ctypes.c_void_p]

        class ClientMessage(ctypes.Structure):  # XClientMessageEvent, padded to sizeof(XEvent)
            _fields_ = [("type", ctypes.c_int), ("serial", ctypes.c_ulong), ("send_event", ctypes.c_int),
                        ("display", ctypes.c_void_p), ("window", ctypes.c_ulong), ("message_type", ctypes.c_ulong),
                        ("format", ctypes.c_int), ("data", ctypes.c_long * 5), ("pad", ctypes.c_long * 12)]

        display = x11.XOpenDisplay(self.display.encode())
        assert display, f"cannot open {self.display}"
        try:
            event = ClientMessage(type=33, send_event=1, display=display, window=int(window),  # 33 = ClientMessage
                                  message_type=x11.XInternAtom(display, b"WM_PROTOCOLS", 0), format=32)
            event.data[0] = x11.XInternAtom(display, b"WM_DELETE_WINDOW", 0)
            event.data[1] = 0  # CurrentTime
            assert x11.XSendEvent(display, int(window), 0, 0, ctypes.byref(event))
            x11.XFlush(display)
        finally:
            x11.XCloseDisplay(display)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def envelope(samples: np.ndarray) -> np.ndarray:
    """RMS per 20 ms block."""
    blocks = samples[: len(samples) // 320 * 320].astype(np.float64).reshape(-1, 320)
    return np.sqrt((blocks ** 2).mean(axis=1))


def best_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """The best Pearson correlation of envelope ``b`` with any same-length stretch of envelope ``a`` (silent
    stretches, which correlate with nothing, count as 0)."""
    return max(float(np.corrcoef(a[offset:offset + len(b)], b)[0, 1]) if a[offset:offset + len(b)].std() > 0 else 0.0
               for offset in range(len(a) - len(b) + 1))


def find(needle: np.ndarray, haystack: np.ndarray) -> int:
    """Where ``needle``'s waveform starts in ``haystack`` (cross-correlation peak; other sound mixed in is fine)."""
    size = len(needle) + len(haystack)
    spectrum = np.fft.rfft(haystack.astype(np.float64), size) * np.conj(np.fft.rfft(needle.astype(np.float64), size))
    return int(np.argmax(np.fft.irfft(spectrum, size)[:len(haystack)]))


def voice_onset(samples: np.ndarray) -> int:
    """The first sample of the first 20 ms block with voice in it."""
    return int(np.argmax(envelope(samples) > 300)) * 320


def voice_end(samples: np.ndarray) -> int:
    """The last sample of the last 20 ms block with voice in it."""
    voiced = envelope(samples) > 300
    return (len(voiced) - int(np.argmax(voiced[::-1]))) * 320 - 1


# The simulated room (numpy, no sound server): the reference 100 ms late with 60 ms of reverberation (noise
# decaying by 60 dB), as loud at the microphone as the reference itself (the loopback's unity gain).
SIMULATED_DELAY_S, SIMULATED_REVERB_S = 0.1, 0.06


def simulated_room(reference: np.ndarray, visitor: np.ndarray, at: int, echo_db: float = 0.0) -> np.ndarray:
    """A microphone in the simulated room: the reference's echo, ``echo_db`` against the reference's level,
    and the visitor from sample ``at``."""
    delay, tail = round(SIMULATED_DELAY_S * RATE), round(SIMULATED_REVERB_S * RATE)
    response = np.zeros(delay + tail)
    response[delay:] = np.random.default_rng(15).normal(0, 0.3, tail) * np.exp(-np.arange(tail) * 6.9 / tail)
    response[delay] = 1.0
    echo = np.convolve(reference.astype(np.float64), response)[:len(reference)]
    echo *= np.sqrt(np.sum(reference.astype(np.float64) ** 2) / np.sum(echo ** 2)) * 10 ** (echo_db / 20)
    echo[at:at + len(visitor)] += visitor[:len(echo) - at]
    return echo.clip(-32768, 32767).astype(np.int16)


def through_canceller(reference: np.ndarray, microphone: np.ndarray, tuning: str):
    """The microphone through a fresh avatard canceller (AEC3 tuned as ``tuning``, no noise suppression), 10 ms at a
    time with its reference alongside, as the devices would give them: (cleaned, its CPU seconds, the canceller)."""
    from avatard.local.echo_canceller import EchoCanceller, ReferenceTap
    from avatard.local.echo_meter import FRAME

    tap = ReferenceTap(RATE)
    canceller = EchoCanceller.open(tap, enabled=True, noise_suppression=False, tuning=tuning)
    canceller.start()
    out, cpu = [], 0.0
    for start in range(0, len(microphone), FRAME):
        t0 = time.thread_time()
        tap.push(reference[start:start + FRAME])
        out.append(canceller.process(microphone[start:start + FRAME])[0])
        cpu += time.thread_time() - t0
    return np.concatenate(out), cpu, canceller


def say_for(say, seconds: float) -> None:
    """Queue enough of LONG_SENTENCE (~15 s each, at espeak's pace) for the avatar to talk ``seconds``;
    ``say(text)`` queues one and returns whether that worked."""
    for _ in range(int(seconds // 12) + 1):
        assert say(LONG_SENTENCE)


@attrs.frozen
class TalkOver:
    visitor: np.ndarray  # what the visitor said (16 kHz)
    onset: float  # when the visitor's first word reached the microphone (monotonic)
    interrupted: float  # when the ``interrupted`` event reached us
    interrupted_while_talking: bool  # ... before the visitor's last word reached the microphone
    user: dict  # the brain's ``transcription`` event for the visitor's utterance
    echoed: np.ndarray  # what the speaker played from 0.5 s after the interrupt: the offline brain's echo

    @property
    def latency(self) -> float:
        return self.interrupted - self.onset


def talk_over(pulse: Pulse, visitor: Visitor, watcher, *, settle: float = 3.0,
              sentence: str = VISITOR_SENTENCE) -> TalkOver:
    """With the avatar about to talk at length (the caller queued it, in the room of ``visitor``) and
    ``watcher`` subscribed to status and transcription events: once it talks, wait ``settle`` s (the
    canceller converges within the first second or two), then the visitor says ``sentence`` over it.
    Returns once the avatar echoed it.

    The onset is taken from the samples that reached the microphone source (the visitor's waveform found in
    a recording of it, plus the file's first voiced block), not from when paplay started.
    """
    from avatard.brains import tts
    speech = tts.synthesize(sentence)
    microphone = pulse.listen(MIC_SOURCE)  # what the daemon's microphone hears: the echo, then the visitor too
    speaker = pulse.listen()
    try:
        watcher.events_until(lambda e: e.get("status") == "speaking", 20)
        time.sleep(settle)
        started = time.monotonic()
        said = visitor.say(speech)
        watcher.events_until(lambda e: e.get("status") == "interrupted", 10)
        interrupted = time.monotonic()
        assert said.wait(30)
        user = watcher.events_until(lambda e: e.get("role") == "user", 10)[-1]
        watcher.events_until(lambda e: e.get("status") == "speaking", 10)
        watcher.events_until(lambda e: e.get("status") == "listening", 20)
        time.sleep(0.5)  # the speaker plays a ring and a device buffer behind the renderer
        heard = microphone.samples(started)
        at = find(speech, heard[:len(speech) + 2 * RATE])  # not later: the avatar's echo of it is a copy
        onset = microphone.arrival(at + voice_onset(speech), started)
        while_talking = interrupted < microphone.arrival(at + voice_end(speech), started)
        echoed = speaker.samples(interrupted + 0.5)
    finally:
        microphone.close()
        speaker.close()
    return TalkOver(visitor=speech, onset=onset, interrupted=interrupted, interrupted_while_talking=while_talking,
                    user=user, echoed=echoed)
