"""Fuzz a real daemon's WebSocket and control socket for minutes: the long run of ``tests/test_fuzz.py``.

Starts ``avatard --server`` (offline brain, built-in renderer, loopback only), then feeds it Hypothesis-generated
examples round-robin from three targets -- WebSocket text messages, WebSocket binary messages, control-socket
bytes -- in batches, until ``--minutes`` have passed or ``--examples`` have been tried. Every example is judged
the way the test judges it (``tests/fuzzing.py``): an ``error`` reply or an accepted request with its effect,
the same connection still answering afterwards, the daemon alive. Meanwhile a second WebSocket client watches
the video and counts frames missing from the timestamp sequence.

It prints, per target, the examples tried, the error and accepted replies and the rule violations; the crashes
(the goal is 0: after one, the example is printed with the end of the daemon's log, the daemon is restarted and
the run goes on); and the frames the watcher missed. Exit status 1 if anything went wrong.

    /work/venv/bin/python bench/fuzz.py [--minutes 2] [--examples N] [--batch 50] [--seed 0] [--no-readme]

Unlike the other benches this one imports from ``tests/``: the generators and judges are the test suite's, and
a second copy would drift. It needs the test extra (``pip install -e '.[test]'``) for Hypothesis and websockets.
"""

from __future__ import annotations

import argparse
import sys
import time

import _common as c

sys.path.insert(0, str(c.REPO / "tests"))

import fuzzing  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

DAEMON_ARGS = ("--server", "--host", "127.0.0.1", "--port", "0", "--log-level", "warning")
MAX_MISSING_RUN = 2  # frames: what tests/test_fuzz.py allows the watcher
SHOWN_VIOLATIONS = 5  # per target; the rest are only counted


class Run:
    """The daemon under test and the clients talking to it; restarted together after a crash."""

    def __init__(self) -> None:
        self.crashes: list[str] = []
        self.reports: list[fuzzing.FrameReport] = []  # one per daemon (a crash starts a new watcher)
        self.start()

    def start(self) -> None:
        self.daemon = c.Daemon.start(*DAEMON_ARGS)
        port = self.daemon.port
        self.watcher = fuzzing.FrameWatcher(port)
        self.port = port
        self.ws = fuzzing.WsFuzzer(port)
        self.control = fuzzing.ControlFuzzer(self.daemon.socket)

    def reconnect(self, target: str) -> None:
        """A violation may leave a connection in any state; start that client afresh."""
        if target == "control":
            tally = self.control.tally
            self.control.close()
            self.control = fuzzing.ControlFuzzer(self.daemon.socket)
            self.control.tally = tally
        else:
            tally = self.ws.tally
            self.ws.close()
            self.ws = fuzzing.WsFuzzer(self.port)
            self.ws.tally = tally

    def alive(self) -> bool:
        return self.daemon.proc.poll() is None

    def restart_after_crash(self, example: fuzzing.Example) -> None:
        log = self.daemon.log()[-2000:]
        self.crashes.append(f"{example!r}\n  exit {self.daemon.proc.returncode}; log tail:\n{log}")
        print(f"\nCRASH on {example!r}\n{log}", file=sys.stderr)
        tallies = self.ws.tally, self.control.tally
        self.finish_watcher()
        self.daemon.kill()
        self.start()
        self.ws.tally, self.control.tally = tallies

    def finish_watcher(self) -> None:
        self.reports.append(self.watcher.report())
        self.watcher.close()

    def stop(self) -> int | None:
        self.finish_watcher()
        for client in (self.ws, self.control):
            try:
                client.close()
            except OSError:
                pass
        return self.daemon.stop()


def _judge(one, target: str):
    def body(example):
        one(target, example)
    return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="stop after this long (default 2)")
    parser.add_argument("--examples", type=int, default=None, help="stop after this many examples in all")
    parser.add_argument("--batch", type=int, default=50, help="examples per target before switching to the next")
    parser.add_argument("--seed", type=int, default=0, help="first Hypothesis seed (batch i uses seed + i)")
    parser.add_argument("--no-readme", action="store_true", help="print only; leave bench/README.md alone")
    args = parser.parse_args()

    print(f"load average before: {c.loadavg()}")
    run = Run()
    targets = {"ws_text": fuzzing.ws_text_examples, "ws_binary": fuzzing.ws_binary_examples,
               "control": fuzzing.control_examples}
    tried = {name: 0 for name in targets}
    violations: dict[str, list[str]] = {name: [] for name in targets}
    started = time.monotonic()
    deadline = started + args.minutes * 60

    def done() -> bool:
        return time.monotonic() >= deadline or (args.examples is not None and sum(tried.values()) >= args.examples)

    def one(target: str, example: fuzzing.Example) -> None:
        if done():
            return  # the rest of this batch is skipped cheaply
        tried[target] += 1
        fuzzer = run.control if target == "control" else run.ws
        try:
            fuzzer.run(example)
        except fuzzing.Violation as exc:
            time.sleep(0.2)  # a dying daemon closes its sockets before it exits
            if not run.alive():
                run.restart_after_crash(example)
                return
            violations[target].append(f"{example!r}\n    {type(exc).__name__}: {exc}")
            run.reconnect(target)
            return
        if not run.alive():
            run.restart_after_crash(example)

    batch = 0
    try:
        while not done():
            for target, strategy in targets.items():
                if done():
                    break
                body = given(strategy)(_judge(one, target))
                configured = settings(max_examples=args.batch, deadline=None, database=None,
                                      phases=[Phase.generate], suppress_health_check=list(HealthCheck))(body)
                seed(args.seed + batch)(configured)()
                batch += 1
        elapsed = time.monotonic() - started
        status = run.daemon.status()
    finally:
        exit_code = run.stop()

    print(f"\n{sum(tried.values())} examples in {elapsed:.0f} s ({sum(tried.values()) / elapsed:.1f}/s), "
          f"{batch} batches of up to {args.batch}, seeds {args.seed}..{args.seed + batch - 1}\n")
    rows = [[name, tried[name], len(violations[name])] for name in targets]
    c.print_table(["target", "examples", "violations"], rows)
    ws, ctl = run.ws.tally, run.control.tally
    print()
    c.print_table(["client", "examples", "error replies", "accepted", "violations"],
                  [["websocket (text + binary)", ws.examples, ws.errors, ws.accepted, ws.violations],
                   ["control (per request line)", ctl.examples, ctl.errors, ctl.accepted, ctl.violations]])
    frames = sum(r.frames for r in run.reports)
    missing = sum(r.missing for r in run.reports)
    longest = max((r.longest_gap for r in run.reports), default=0)
    irregular = sum(r.irregular for r in run.reports)
    watcher_problems = [p for r in run.reports for p in r.problems(MAX_MISSING_RUN)]
    print(f"\ncrashes: {len(run.crashes)}")
    print(f"frame watcher: {frames} frames, {missing} missing, longest gap {longest} frames, "
          f"{irregular} irregular steps{'; ' + '; '.join(watcher_problems) if watcher_problems else ''}")
    print(f"daemon counters: ticks_skipped {status['ticks_skipped']}, frames_dropped {status['frames_dropped']}, "
          f"video_dropped {status['video_dropped']}, events_dropped {status['events_dropped']}, "
          f"interrupts {status['interrupts']}, turns {status['turns']}")
    print(f"daemon exit code on SIGTERM: {exit_code}")
    print(f"load average after: {c.loadavg()}")
    for name in targets:
        for text in violations[name][:SHOWN_VIOLATIONS]:
            print(f"\nviolation ({name}): {text}")

    failed = bool(run.crashes or any(violations.values()) or watcher_problems or exit_code != 0)
    if not args.no_readme:
        c.update_readme("fuzz", [
            ("fuzz: examples", f"{sum(tried.values())} in {elapsed:.0f} s: " + ", ".join(
                f"{name} {tried[name]}" for name in targets) + f"; {ws.errors + ctl.errors} error replies, "
             f"{ws.accepted + ctl.accepted} accepted, {sum(map(len, violations.values()))} violations",
             "0 violations"),
            ("fuzz: crashes", str(len(run.crashes)), "0"),
            ("fuzz: frame watcher", f"{frames} frames, {missing} missing, longest gap {longest}",
             f"no gap > {MAX_MISSING_RUN} frames"),
        ])
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    c.run_main(main)
