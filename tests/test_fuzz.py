"""Property-based fuzzing of both wire protocols against one real daemon.

Hypothesis generates WebSocket text and binary messages and control-socket bytes (``tests/fuzzing.py``); each
one must get an error reply or be accepted with its documented effect, the daemon must stay alive, the
connection that sent it must stay usable, and a second WebSocket client watching the video must see every
frame (no run of more than 2 missing) for the whole test. 200 examples per target take ~10 s in all;
``bench/fuzz.py`` runs the same generators for minutes.

A handful of inputs are also sent deliberately, as regression tests: each of them used to kill the daemon
(a 5000-digit integer and 100 000 nested arrays escape ``json.loads`` as ValueError / RecursionError rather
than JSONDecodeError; a lone surrogate in a text made espeak's UTF-8 encoding raise in the brain). The fuzzer
also found a control ``subscribe`` whose client hangs up while an event is being sent killing the daemon (the
error escaped a nursery as an ExceptionGroup); ``test_faults.py``'s control-socket flood covers that one.
"""

import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from conftest import start_daemon
from fuzzing import (
    ControlFuzzer,
    Example,
    FrameWatcher,
    WsFuzzer,
    control_examples,
    ws_binary_examples,
    ws_text_examples,
)
from hypothesis import HealthCheck, given, settings

FUZZ_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck),
                         print_blob=True)
MAX_MISSING_RUN = 2  # frames; a watcher that reads promptly should see every one


@pytest.fixture(scope="module")
def fuzz_daemon():
    """One daemon for the whole module: starting one per example would take longer than fuzzing it."""
    tmp = Path(tempfile.mkdtemp(prefix="avd-", dir="/tmp"))
    daemon = start_daemon(tmp)
    try:
        yield daemon
        assert daemon.proc.poll() is None, f"the daemon died:\n{daemon.log()[-3000:]}"
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def watcher(fuzz_daemon):
    watcher = FrameWatcher(fuzz_daemon.port)
    yield watcher
    watcher.close()


@pytest.fixture(scope="module")
def ws_fuzzer(fuzz_daemon):
    fuzzer = WsFuzzer(fuzz_daemon.port)
    yield fuzzer
    fuzzer.close()


@pytest.fixture(scope="module")
def control_fuzzer(fuzz_daemon):
    fuzzer = ControlFuzzer(fuzz_daemon.socket)
    yield fuzzer
    fuzzer.close()


def assert_alive(daemon):
    assert daemon.proc.poll() is None, f"the daemon died (exit {daemon.proc.returncode}):\n{daemon.log()[-3000:]}"


def assert_frames_flowed(watcher, mark, started):
    report = watcher.report(mark)
    assert not report.problems(MAX_MISSING_RUN), report
    # The watcher saw the whole run, not just a moment of it.
    assert report.seconds >= 0.8 * (time.monotonic() - started) - 0.5, report


def test_websocket_text_messages(fuzz_daemon, watcher, ws_fuzzer):
    mark, started = watcher.mark(), time.monotonic()

    @FUZZ_SETTINGS
    @given(ws_text_examples)
    def one(example):
        try:
            ws_fuzzer.run(example)
        finally:
            assert_alive(fuzz_daemon)

    one()
    assert_frames_flowed(watcher, mark, started)
    assert ws_fuzzer.tally.errors and ws_fuzzer.tally.accepted, ws_fuzzer.tally  # both kinds were exercised


def test_websocket_binary_messages(fuzz_daemon, watcher, ws_fuzzer):
    mark, started = watcher.mark(), time.monotonic()

    @FUZZ_SETTINGS
    @given(ws_binary_examples)
    def one(example):
        try:
            ws_fuzzer.run(example)
        finally:
            assert_alive(fuzz_daemon)

    one()
    assert_frames_flowed(watcher, mark, started)


def test_control_socket_lines(fuzz_daemon, watcher, control_fuzzer):
    mark, started = watcher.mark(), time.monotonic()

    @FUZZ_SETTINGS
    @given(control_examples)
    def one(example):
        try:
            control_fuzzer.run(example)
        finally:
            assert_alive(fuzz_daemon)

    one()
    assert_frames_flowed(watcher, mark, started)


# -- inputs that once killed the daemon -----------------------------------------------------------------------------

BIG_INT = "1" * 5000  # json.loads: ValueError "Exceeds the limit (4300 digits) for integer string conversion"
DEEP = "[" * 100_000  # json.loads: RecursionError
SURROGATE_TEXT = json.dumps({"type": "text_input", "data": {"text": "hi \ud800"}})  # "\\ud800": valid JSON


@pytest.mark.parametrize("text", [BIG_INT, DEEP, '{"type": "audio_input", "sample_rate": %s}' % BIG_INT,
                                  SURROGATE_TEXT], ids=["big-int", "deep-nesting", "big-int-field", "lone-surrogate"])
def test_websocket_inputs_that_crashed_the_daemon(daemon, text):
    fuzzer = WsFuzzer(daemon.port)
    try:
        fuzzer.run(Example("ws_text", text, None if text == SURROGATE_TEXT else "error", None, "regression"))
    finally:
        time.sleep(0.5)  # the brain speaks the surrogate text asynchronously
        assert_alive(daemon)
    fuzzer.close()


@pytest.mark.parametrize("line", [BIG_INT.encode(), DEEP[:60_000].encode(),
                                  json.dumps({"cmd": "say", "text": "hi \ud800"}).encode()],
                         ids=["big-int", "deep-nesting", "lone-surrogate-say"])
def test_control_inputs_that_crashed_the_daemon(daemon, line):
    fuzzer = ControlFuzzer(daemon.socket)
    try:
        fuzzer.run(Example("control", line + b"\n", None, None, "regression"))
    finally:
        time.sleep(0.5)  # the brain speaks the surrogate text asynchronously
        assert_alive(daemon)
    fuzzer.close()
