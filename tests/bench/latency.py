#!/usr/bin/python3
"""Save -> reloaded latency: pyhotd against a minimal in-process reloader (the floor).

For every edit the bench takes time.monotonic_ns() right before it writes a new version of
a module (open, write, close; the constant VALUE changes each time). The edited statement,
the module's first after `import time`, takes time.monotonic_ns() too (`_STAMP_NS, VALUE =
time.monotonic_ns(), N`); the module's last statement sends both in one datagram to a Unix
socket the bench has bound. A whole-module reload runs every statement; a definition-level
one runs the edited statement and the send, which reads the names it changed. CLOCK_MONOTONIC
is system-wide, so the difference is the save -> new-code-ran latency. The two subjects
run in the same invocation and their edits alternate:

  (a) pyhotd --config C --watch DIR --socket SOCK, C saying [watch] import = all (so
      the module is loaded at start) and nothing else: the default settings, with
      definition-level reload ([reload] mode = definitions) and the adaptive settle
      (window 10 ms). --mode module adds [reload] mode = module (the whole top level runs
      on each reload, as with the floor's importlib.reload); --settle-ms N passes
      --settle-ms N.
  (b) the floor: a separate /usr/bin/python3 process that imports the same kind of module,
      watches its directory with raw inotify through ctypes (IN_CLOSE_WRITE|IN_MOVED_TO,
      blocking read) and calls importlib.reload on it when its file changes; no .pyc is
      ever written or read.

Prints both distributions, the ratio pyhotd_p50 / floor_p50, whether the goal
(pyhotd p50 <= floor p50) is met, and pyhotd's own batch figures from its events.
Never fails on time: exit 0 unless something broke (a process failed to start, ...).

Usage: /usr/bin/python3 tests/bench/latency.py [--edits N] [--warmup N] [--gap-ms MS]
       [--timeout-ms MS] [--no-events] [--settle-ms N] [--mode module] [--keep]
Binaries come from $PYHOT_BIN (default: <repo>/build/bin). Standard library only.
"""

import argparse
import json
import os
import platform
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import cpu_model, import_all_config, percentile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE = "bench_target"

# The benchmarked module; identical for both subjects but for TAG. The save changes one
# statement, the second, and that statement takes the stamp first thing: a whole-module
# reload (the floor, pyhotd with mode = module) runs it after `import time` only, and a
# definition-level reload (pyhotd's default) runs it because it changed. The send at the
# end reads VALUE and _STAMP_NS, so a definition-level reload runs it again too; it is
# one statement, so the socket it uses is always its own.
MODULE_TEMPLATE = '''\
import time
_STAMP_NS, VALUE = time.monotonic_ns(), {value}
import socket

TAG = {tag!r}


def answer():
    return VALUE * 2


class Thing:
    def value(self):
        return VALUE


with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as _s:
    _s.sendto(b"%s %d %d" % (TAG.encode(), VALUE, _STAMP_NS), {stamp_path!r})
'''

# The floor: a minimal in-process reloader, run as its own /usr/bin/python3 process.
FLOOR_SOURCE = r'''
import ctypes, importlib, os, shutil, struct, sys
sys.dont_write_bytecode = True
watch_dir, module_name = sys.argv[1], sys.argv[2]
shutil.rmtree(os.path.join(watch_dir, "__pycache__"), ignore_errors=True)
sys.path.insert(0, watch_dir)
IN_CLOSE_WRITE, IN_MOVED_TO, IN_CLOEXEC = 0x8, 0x80, 0o2000000
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(IN_CLOEXEC)
if fd < 0:
    sys.exit("inotify_init1: %s" % os.strerror(ctypes.get_errno()))
if libc.inotify_add_watch(fd, os.fsencode(watch_dir), IN_CLOSE_WRITE | IN_MOVED_TO) < 0:
    sys.exit("inotify_add_watch: %s" % os.strerror(ctypes.get_errno()))
module = importlib.import_module(module_name)   # watch first, so no edit is missed
target = os.fsencode(module_name + ".py")
header = struct.Struct("iIII")
while True:
    buf = os.read(fd, 65536)                      # blocking
    hit, off = False, 0
    while off < len(buf):
        _wd, _mask, _cookie, length = header.unpack_from(buf, off)
        name = buf[off + 16:off + 16 + length].split(b"\0", 1)[0]
        off += 16 + length
        hit = hit or name == target
    if hit:
        importlib.reload(module)
'''


class BenchError(Exception):
    pass


# ---- machine -------------------------------------------------------------------------

def machine_lines(pyhotd):
    model = cpu_model()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    version = "?"
    try:
        version = subprocess.run([pyhotd, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/loadavg") as f:
            load = " ".join(f.read().split()[:3])
    except OSError:
        load = "?"
    return [
        "cpu:     %s" % model,
        "cores:   %s online, %s usable by this process" % (os.cpu_count(), usable),
        "kernel:  %s (%s)" % (platform.release(), platform.machine()),
        "load:    %s (1/5/15 min, at start; other work on the machine adds noise)" % load,
        "python:  %s (%s)" % (platform.python_version(), sys.executable),
        "pyhotd:  %s (%s)" % (version, pyhotd),
    ]


# ---- statistics ----------------------------------------------------------------------

def percentiles(values):
    """p50, p90, p99 by linear interpolation between closest ranks."""
    return tuple(percentile(values, p) for p in (50, 90, 99))


def describe(values):
    if not values:
        return None
    p50, p90, p99 = percentiles(values)
    return {"n": len(values), "min": min(values), "p50": p50, "p90": p90, "p99": p99,
            "max": max(values), "mean": statistics.fmean(values)}


def row(name, d, unit="ms"):
    if d is None:
        return "  %-34s (no samples)" % name
    return "  %-34s %5d %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f" % (
        name, d["n"], d["min"], d["p50"], d["p90"], d["p99"], d["max"], d["mean"])


HEADER = "  %-34s %5s %8s %8s %8s %8s %8s %8s" % ("ms", "n", "min", "p50", "p90", "p99",
                                                   "max", "mean")


# ---- subjects ------------------------------------------------------------------------

class Stamps:
    """The datagram socket the modules report to."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)
        self.stale = 0

    def recv_all(self):
        out = []
        while True:
            try:
                data = self.sock.recv(256)
            except BlockingIOError:
                return out
            tag, value, ns = data.split()
            out.append((tag.decode(), int(value), int(ns)))

    def close(self):
        self.sock.close()


class Subject:
    def __init__(self, tag, label, workdir, stamp_path):
        self.tag = tag
        self.label = label
        self.dir = os.path.join(workdir, tag + "-watch")
        os.mkdir(self.dir)
        self.path = os.path.join(self.dir, MODULE + ".py")
        self.stamp_path = stamp_path
        self.value = 0
        self.samples = []      # ms
        self.warmup = []       # ms
        self.lost = 0
        self.proc = None
        self.log_path = os.path.join(workdir, tag + ".log")
        self.log = None
        self.write(0)

    def content(self, value):
        return MODULE_TEMPLATE.format(tag=self.tag, value=value,
                                      stamp_path=self.stamp_path).encode()

    def write(self, value):
        """Writes version `value`; returns the monotonic time taken right before it."""
        data = self.content(value)
        t0 = time.monotonic_ns()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return t0

    def start(self, argv, env=None):
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def log_tail(self, n=30):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
            return "\n".join("    | " + l for l in lines[-n:])
        except OSError:
            return "    (no log)"

    def check_alive(self):
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError("%s exited with status %s; its output:\n%s"
                             % (self.label, self.proc.returncode, self.log_tail()))

    def stop_process(self, timeout=5.0):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log:
            self.log.close()


class Control:
    """A newline-delimited JSON connection to pyhotd's control socket."""

    def __init__(self, path, deadline):
        last = None
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(path)
                break
            except OSError as exc:
                self.sock.close()
                last = exc
                if time.monotonic() > deadline:
                    raise BenchError("cannot connect to %s: %s" % (path, last))
                time.sleep(0.02)
        self.buf = b""
        self.next_id = 1

    def send(self, cmd, **args):
        request = dict(id=self.next_id, cmd=cmd, **args)
        self.next_id += 1
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        return request["id"]

    def lines(self):
        """Every complete line available now (non-blocking)."""
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                try:
                    chunk = self.sock.recv(65536)
                except BlockingIOError:
                    break
                if not chunk:
                    raise BenchError("pyhotd closed the control connection")
                self.buf += chunk
        finally:
            self.sock.setblocking(True)
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            if line.strip():
                out.append(json.loads(line))
        return out

    def call(self, cmd, timeout=10.0, **args):
        rid = self.send(cmd, **args)
        deadline = time.monotonic() + timeout
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        try:
            while True:
                for msg in self.lines():
                    if msg.get("id") == rid:
                        return msg
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError("pyhotd did not answer %r within %.0f s" % (cmd, timeout))
                sel.select(left)
        finally:
            sel.close()

    def close(self):
        self.sock.close()


# ---- the run -------------------------------------------------------------------------

def wait_initial_stamp(stamps, subject, timeout):
    """The module's import at start sends VALUE 0: the subject is ready."""
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    sel.register(stamps.sock, selectors.EVENT_READ)
    try:
        while True:
            for tag, value, _ns in stamps.recv_all():
                if tag == subject.tag and value == 0:
                    return
            subject.check_alive()
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError("%s never imported the module (no stamp within %.0f s); "
                                 "its output:\n%s" % (subject.label, timeout, subject.log_tail()))
            sel.select(min(left, 0.1))
    finally:
        sel.close()


def run(args):
    pyhot_bin = os.environ.get("PYHOT_BIN") or os.path.join(REPO, "build", "bin")
    pyhotd = os.path.join(pyhot_bin, "pyhotd")
    if not os.access(pyhotd, os.X_OK):
        raise BenchError("no pyhotd at %s (build it, or set PYHOT_BIN)" % pyhotd)

    command = shlex.join([sys.executable] + sys.argv)
    if os.environ.get("PYHOT_BIN"):
        command = "PYHOT_BIN=%s %s" % (shlex.quote(os.environ["PYHOT_BIN"]), command)
    print("pyhot save -> reloaded latency")
    print("command: %s" % command)
    for line in machine_lines(pyhotd):
        print(line)
    print("edits:   %d per subject (+%d warm-up each, not counted), alternating (first one "
          "swaps each round), %g ms apart; "
          "timeout %d ms per edit" % (args.edits, args.warmup, args.gap_ms, args.timeout_ms))
    sys.stdout.flush()

    workdir = tempfile.mkdtemp(prefix="pyhot-bench-")   # mode 0700, ours
    stamps = None
    control = events = None
    subjects = []
    try:
        stamps = Stamps(os.path.join(workdir, "stamps.sock"))
        sock_dir = tempfile.mkdtemp(prefix="sock-", dir=workdir)
        sock_path = os.path.join(sock_dir, "pyhotd.sock")
        settle = [] if args.settle_ms is None else ["--settle-ms", str(args.settle_ms)]
        changed = settle + (["mode = module"] if args.mode == "module" else [])
        daemon = Subject("pyhotd", "pyhotd (%s)" % (" ".join(changed) or "default settings"),
                         workdir, stamps.path)
        floor = Subject("floor", "floor (python3 inotify+reload)", workdir, stamps.path)
        subjects = [daemon, floor]

        # (a) pyhotd
        daemon.start([pyhotd, "--config", import_all_config(workdir, args.mode), "--watch", daemon.dir,
                      "--socket", sock_path] + settle)
        deadline = time.monotonic() + 10.0
        while True:
            daemon.check_alive()
            try:
                control = Control(sock_path, min(deadline, time.monotonic() + 0.2))
                break
            except BenchError:
                if time.monotonic() > deadline:
                    raise BenchError("pyhotd's socket never accepted a connection within 10 s; "
                                     "its output:\n%s" % daemon.log_tail())
        reply = control.call("ping")
        if not reply.get("ok"):
            raise BenchError("pyhotd answered ping with %r" % reply)
        wait_initial_stamp(stamps, daemon, 10.0)
        if not args.no_events:
            events = Control(sock_path, time.monotonic() + 5.0)
            reply = events.call("subscribe")
            if not reply.get("ok"):
                raise BenchError("subscribe failed: %r" % reply)

        # (b) the floor
        floor_script = os.path.join(workdir, "floor.py")
        with open(floor_script, "w") as f:
            f.write(FLOOR_SOURCE)
        floor.start(["/usr/bin/python3", floor_script, floor.dir, MODULE])
        wait_initial_stamp(stamps, floor, 10.0)

        batches = {}        # edit index -> [batch events] (pyhotd)
        reload_events = {}  # edit index -> [reload events] (pyhotd)
        unmatched = []      # stamps that matched no pending edit (late or duplicate)
        sel = selectors.DefaultSelector()
        sel.register(stamps.sock, selectors.EVENT_READ, "stamp")
        if events:
            sel.register(events.sock, selectors.EVENT_READ, "event")
        current = {"index": -1}

        def drain_events():
            if not events:
                return
            for msg in events.lines():
                if msg.get("event") == "batch":
                    batches.setdefault(current["index"], []).append(msg)
                elif msg.get("event") == "reload":
                    reload_events.setdefault(current["index"], []).append(msg)

        total = args.warmup + args.edits
        for i in range(total):
            for subject in (subjects if i % 2 == 0 else subjects[::-1]):
                subject.check_alive()
                subject.value += 1
                if subject is daemon:
                    drain_events()
                    current["index"] = i
                t0 = subject.write(subject.value)
                deadline_ns = t0 + args.timeout_ms * 1_000_000
                got = None
                while got is None:
                    for tag, value, ns in stamps.recv_all():
                        if tag == subject.tag and value == subject.value and got is None:
                            got = ns
                        else:
                            unmatched.append((tag, value))
                    if got is not None:
                        break
                    left = (deadline_ns - time.monotonic_ns()) / 1e9
                    if left <= 0:
                        break
                    for key, _mask in sel.select(left):
                        if key.data == "event":
                            drain_events()
                if got is None:
                    subject.lost += 1
                else:
                    ms = (got - t0) / 1e6
                    (subject.warmup if i < args.warmup else subject.samples).append(ms)
                time.sleep(args.gap_ms / 1000.0)
        time.sleep(0.05)
        drain_events()
        sel.close()

        report(args, daemon, floor, batches, reload_events, unmatched)
    finally:
        if control is not None:
            try:
                control.call("shutdown", timeout=5.0)
            except (BenchError, OSError):
                pass
        for c in (events, control):
            if c is not None:
                c.close()
        for subject in subjects:
            if subject is subjects[0] and subject.proc is not None:
                try:
                    subject.proc.wait(5.0)      # stops by itself after shutdown
                except subprocess.TimeoutExpired:
                    pass
            subject.stop_process()
        if subjects and subjects[0].proc is not None and subjects[0].proc.returncode not in (0, None):
            print("note: pyhotd exited with status %s" % subjects[0].proc.returncode)
        if stamps is not None:
            stamps.close()
        if args.keep:
            print("kept %s" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def report(args, daemon, floor, batches, reload_events, unmatched):
    d = describe(daemon.samples)
    f = describe(floor.samples)
    print()
    print("save -> new code ran (end to end, monotonic clock)")
    print(HEADER)
    print(row(daemon.label, d))
    print(row(floor.label, f))
    for s in (daemon, floor):
        if s.lost:
            print("  LOST: %s: %d edit(s) never reported within %d ms"
                  % (s.label, s.lost, args.timeout_ms))
    if unmatched:
        print("  %d stamp(s) arrived late or twice (not counted): %s"
              % (len(unmatched), unmatched[:10]))
    if args.warmup:
        print("  warm-up (not counted): pyhotd %s ms; floor %s ms"
              % (", ".join("%.3f" % x for x in daemon.warmup),
                 ", ".join("%.3f" % x for x in floor.warmup)))

    if events_enabled(args):
        counted = {i: b for i, b in batches.items() if i >= args.warmup}
        all_b = [b for i in sorted(counted) for b in counted[i]]
        latency = [b["latency_ms"] for b in all_b if isinstance(b.get("latency_ms"), (int, float))]
        duration = [b["duration_ms"] for b in all_b if isinstance(b.get("duration_ms"), (int, float))]
        reload_ms = [r["duration_ms"] for i in sorted(reload_events) if i >= args.warmup
                     for r in reload_events[i]
                     if r.get("result") == "ok" and isinstance(r.get("duration_ms"), (int, float))]
        handoff = [b["latency_ms"] - b["duration_ms"] for b in all_b
                   if isinstance(b.get("latency_ms"), (int, float))
                   and isinstance(b.get("duration_ms"), (int, float))]
        results = {}
        for b in all_b:
            results[b.get("result")] = results.get(b.get("result"), 0) + 1
        multi = sum(1 for b in counted.values() if len(b) > 1)
        print()
        print("pyhotd's own figures, from its events (counted edits only)")
        print(HEADER)
        print(row("batch latency_ms (event->done)", describe(latency)))
        print(row("batch duration_ms (reload_batch)", describe(duration)))
        print(row("reload duration_ms (the module)", describe(reload_ms)))
        print(row("latency_ms - duration_ms (hand-off)", describe(handoff)))
        print("  batches: %d for %d edits (%s); edits with more than one batch: %d"
              % (len(all_b), args.edits, ", ".join("%s %d" % kv for kv in sorted(results.items(), key=str)), multi))
        print("  batch latency_ms: first file event seen by the loop thread -> batch job done;"
              "\n  batch duration_ms: the python side of the batch (index, read, hash, compile,"
              " plan,\n  run, patch); reload duration_ms: the module's own run and patching;"
              " hand-off: the\n  loop thread -> python thread -> back part of latency_ms."
              " The stamp is taken inside\n  the module's run, so work after it (e.g."
              " patching) is in latency_ms but not end to end.")

    print()
    if d and f:
        ratio = d["p50"] / f["p50"] if f["p50"] > 0 else float("inf")
        print("ratio pyhotd_p50 / floor_p50 = %.3f / %.3f = %.2f" % (d["p50"], f["p50"], ratio))
        if d["p50"] <= f["p50"]:
            print("goal (pyhotd p50 <= floor p50): MET (%.3f ms under)" % (f["p50"] - d["p50"]))
        else:
            print("goal (pyhotd p50 <= floor p50): NOT MET (%.3f ms over, +%.0f%%)"
                  % (d["p50"] - f["p50"], (ratio - 1) * 100))
        if args.settle_ms is None and args.mode is None:
            print("goal of issue 12 (default settings: pyhotd p50 <= 1.2 x floor p50): %s "
                  "(%.2fx)" % ("MET" if ratio <= 1.2 else "NOT MET", ratio))
    else:
        print("goal (pyhotd p50 <= floor p50): cannot tell (no samples)")


def events_enabled(args):
    return not args.no_events


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edits", type=int, default=100, help="counted edits per subject (default 100)")
    parser.add_argument("--warmup", type=int, default=3, help="uncounted edits first (default 3)")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="pause between edits (default 20)")
    parser.add_argument("--timeout-ms", type=int, default=2000, help="an edit not reported by then is lost (default 2000)")
    parser.add_argument("--no-events", action="store_true", help="do not subscribe to pyhotd's events")
    parser.add_argument("--settle-ms", type=int, default=None,
                        help="start pyhotd with --settle-ms N (default: its default settings)")
    parser.add_argument("--mode", choices=("module",), default=None,
                        help="run pyhotd with [reload] mode = module (default: its default, "
                        "definitions)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = parser.parse_args()
    if args.edits < 1 or args.warmup < 0 or args.gap_ms < 0 or args.timeout_ms < 1:
        parser.error("--edits must be >= 1; --warmup, --gap-ms >= 0; --timeout-ms >= 1")
    if args.edits < 50:
        print("note: fewer than 50 edits; the p99 is not meaningful", file=sys.stderr)
    try:
        run(args)
    except BenchError as exc:
        print("latency.py: %s" % exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
