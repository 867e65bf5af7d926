#!/usr/bin/python3
"""Polling: what pyhotd's poll backend costs on a large tree, and how fast it finds an edit,
beside watchdog's PollingObserver on the same tree at the same interval, in the same run.

The tree: 10,000 modules in 500 directories (namespace packages d000..d499, 20 modules
each), of which 200 are imported (loaded) in pyhotd. pyhotd runs with
`[watch] backend = poll` and `poll_interval_ms` (default: its default, 300 ms), import =
none, and the bench imports the 200 modules with `exec`. watchdog's PollingObserver
(python3-watchdog) runs in its own /usr/bin/python3 process with timeout = the same
interval, on the same tree, with a handler that prints each file event with
time.monotonic_ns().

Phase 1 (idle, --seconds, default 20): both run side by side with nothing changing; the
CPU time each process used (summed over its threads, /proc/PID/task/*/schedstat, ns) per
second of wall time.
Phase 2 (edits, --edits, default 40): one loaded module at a time is rewritten (new
VALUE) at a random phase of the interval; for each edit the time until pyhotd detected it
(the batch event's arrival minus its latency_ms: the moment the loop thread saw the change)
and until watchdog's handler ran.

Goals (issue 12): pyhotd's idle CPU at most 0.1x watchdog's; pyhotd's detection p50 at
most interval/2 + 20 ms. Prints figures; never fails on time.

Usage: /usr/bin/python3 tests/bench/watch_poll.py [--interval-ms MS] [--seconds S]
       [--edits N] [--keep]
"""

import argparse
import os
import random
import select
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import percentile  # noqa: E402
from watch_common import Pyhotd, command_line, machine  # noqa: E402

N_DIRS = 500
PER_DIR = 20
N_LOADED = 200

WATCHDOG = r'''
import os, sys, time
from watchdog.observers.polling import PollingObserver
from watchdog.events import FileSystemEventHandler
root, interval = sys.argv[1], float(sys.argv[2])

class Handler(FileSystemEventHandler):
    def on_any_event(self, event):
        if not event.is_directory and event.event_type in ("modified", "created"):
            sys.stdout.write("%d %s\n" % (time.monotonic_ns(), event.src_path))
            sys.stdout.flush()

observer = PollingObserver(timeout=interval)
observer.schedule(Handler(), root, recursive=True)
observer.start()
sys.stdout.write("ready\n")
sys.stdout.flush()
try:
    sys.stdin.read()
finally:
    observer.stop()
    observer.join()
'''

TEMPLATE = "VALUE = {value}\n\ndef answer():\n    return VALUE * 2\n"


def cpu_ns(pid):
    """CPU time of every thread of pid, ns (schedstat's first field)."""
    total = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def make_tree(root):
    paths = []
    for d in range(N_DIRS):
        pkg = os.path.join(root, "d%03d" % d)
        os.makedirs(pkg)
        for m in range(PER_DIR):
            path = os.path.join(pkg, "m%02d.py" % m)
            with open(path, "w") as f:
                f.write(TEMPLATE.format(value=0))
            paths.append(path)
    return paths


def describe(values):
    if not values:
        return "no samples"
    return "n %d, p50 %.1f, p90 %.1f, max %.1f ms" % (
        len(values), percentile(values, 50), percentile(values, 90), max(values))


class WatchdogProc:
    def __init__(self, root, interval_s):
        self.proc = subprocess.Popen(["/usr/bin/python3", "-c", WATCHDOG, root, str(interval_s)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.buf = b""
        self.seen = {}
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            raise SystemExit("watchdog did not start (is python3-watchdog installed?)")

    def drain(self, timeout):
        fd = self.proc.stdout.fileno()
        r, _, _ = select.select([fd], [], [], timeout)
        if not r:
            return
        chunk = os.read(fd, 1 << 16)
        self.buf += chunk
        while b"\n" in self.buf:
            line, _, self.buf = self.buf.partition(b"\n")
            stamp, _, path = line.decode().partition(" ")
            self.seen.setdefault(path, []).append(int(stamp))

    def stop(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--interval-ms", type=int, default=None,
                    help="poll interval of both (default: pyhotd's default, 300 ms)")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--edits", type=int, default=40)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    interval_ms = a.interval_ms or 300
    print("machine:", machine())
    print("command:", command_line())

    work = tempfile.mkdtemp(prefix="pyhot-poll-")
    root = os.path.join(work, "tree")
    paths = make_tree(root)
    rng = random.Random(12)
    loaded = sorted(rng.sample(paths, N_LOADED))
    names = {p: "%s.%s" % (os.path.basename(os.path.dirname(p)), os.path.basename(p)[:-3])
             for p in loaded}
    conf = os.path.join(work, "pyhotd.conf")
    with open(conf, "w") as f:
        f.write("[watch]\nroot = %s\nbackend = poll\nimport = none\n" % root)
        if a.interval_ms:
            f.write("poll_interval_ms = %d\n" % a.interval_ms)
    d = Pyhotd(["--config", conf, "--log-level", "warn"], work)
    w = None
    try:
        d.connect()
        st = d.wait_ready()
        d.call("exec", code="import " + ", ".join(names[p] for p in loaded))
        deadline = time.monotonic() + 30
        while d.call("status")["watch"]["poll"]["loaded_files"] != N_LOADED:
            if time.monotonic() > deadline:
                raise SystemExit("pyhotd's poll did not learn the loaded modules")
            time.sleep(0.05)
        st = d.call("status")
        poll = st["watch"]["poll"]
        print("pyhotd: backend %s, interval %d ms, %d directories, %d files, %d loaded"
              % (st["watch"]["backend"], poll["interval_ms"], poll["dirs"], poll["files"],
                 poll["loaded_files"]))
        if poll["interval_ms"] != interval_ms:
            raise SystemExit("pyhotd polls every %d ms, not %d" % (poll["interval_ms"], interval_ms))
        t = time.monotonic()
        w = WatchdogProc(root, interval_ms / 1000.0)
        print("watchdog PollingObserver(timeout=%.3f): started in %.1f s (first snapshot)"
              % (interval_ms / 1000.0, time.monotonic() - t))
        time.sleep(2 * interval_ms / 1000.0)

        # Phase 1: idle CPU, side by side.
        d0, w0, t0 = cpu_ns(d.proc.pid), cpu_ns(w.proc.pid), time.monotonic()
        end = t0 + a.seconds
        while time.monotonic() < end:
            w.drain(0.2)
        d1, w1, t1 = cpu_ns(d.proc.pid), cpu_ns(w.proc.pid), time.monotonic()
        wall = t1 - t0
        d_cpu = (d1 - d0) / 1e9 / wall
        w_cpu = (w1 - w0) / 1e9 / wall
        cycles = d.call("status")["watch"]["poll"]["cycles"]

        # Phase 2: edits of loaded modules at random phases of the interval.
        d.call("subscribe")
        det_d, e2e_d, det_w = [], [], []
        lost_d = lost_w = 0
        for i in range(a.edits):
            time.sleep(rng.uniform(0, interval_ms / 1000.0))
            path = rng.choice(loaded)
            w.seen.pop(path, None)
            t_write = time.monotonic_ns()
            with open(path, "w") as f:
                f.write(TEMPLATE.format(value=i + 1))
            got_d = got_w = False
            limit = time.monotonic() + 10
            while not (got_d and got_w) and time.monotonic() < limit:
                if not got_d:
                    try:
                        e = d.next_event(timeout=0.005)
                    except (OSError, TimeoutError):
                        e = None
                    if e and e.get("event") == "batch" and path in e.get("paths", ()):
                        now = time.monotonic_ns()
                        got_d = True
                        e2e_d.append((now - t_write) / 1e6)
                        det_d.append((now - t_write) / 1e6 - e["latency_ms"])
                if not got_w:
                    w.drain(0.005)
                    stamps = [s for s in w.seen.get(path, []) if s >= t_write]
                    if stamps:
                        got_w = True
                        det_w.append((stamps[0] - t_write) / 1e6)
            lost_d += not got_d
            lost_w += not got_w
    finally:
        if w:
            w.stop()
        d.stop()
        if a.keep:
            print("kept:", work)
        else:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print("phase 1, idle %.1f s (%d pyhotd poll cycles):" % (wall, cycles))
    print("  pyhotd   CPU %.4f s/s (%.2f%% of a core)" % (d_cpu, d_cpu * 100))
    print("  watchdog CPU %.4f s/s (%.2f%% of a core)" % (w_cpu, w_cpu * 100))
    ratio = d_cpu / w_cpu if w_cpu > 0 else float("inf")
    print("  ratio pyhotd / watchdog = %.3f" % ratio)
    print("phase 2, %d edits of loaded modules at random phases:" % a.edits)
    print("  pyhotd   detection %s (lost %d)" % (describe(det_d), lost_d))
    print("  pyhotd   write -> batch done %s" % describe(e2e_d))
    print("  watchdog detection %s (lost %d)" % (describe(det_w), lost_w))
    goal_ms = interval_ms / 2 + 20
    p50 = percentile(det_d, 50) if det_d else float("inf")
    print("goal (pyhotd CPU <= 0.1 x watchdog's): %s (%.3fx)" % ("met" if ratio <= 0.1 else "NOT met", ratio))
    print("goal (pyhotd detection p50 <= %.0f ms): %s (%.1f ms)"
          % (goal_ms, "met" if p50 <= goal_ms else "NOT met", p50))


if __name__ == "__main__":
    main()
