#!/usr/bin/python3
"""status requests per second and latency with 32 concurrent clients, alone and while a
2-second job runs in the interpreter.

What it measures: pyhotd's loop thread answering `status` (docs/protocol.md) to N clients
(default 32), each with one request in flight: it sends {"id":K,"cmd":"status"}, waits for
the whole response line, sends the next. The load generator is tests/bench/status_load.c
(one thread, one epoll loop; built by CMake as build/bin/status_load, or here with cc).

Two phases per run, on the same daemon:

- idle: nothing else runs;
- job:  the python thread runs `import time; time.sleep(2)` jobs (exec requests, one after
        the other on a connection of their own, for the whole measurement), so every
        status answer also reports the running job. The loop thread must answer as fast.

Each phase: 1 s of warm-up, then --seconds of measurement. It prints requests/s and the
latency percentiles (p50, p90, p99, p99.9, max) of each phase of each run, the machine,
and the commands behind the figures. The goal set by the issue: at least 30,000
requests/s and p99 under 1 ms in both phases. It never fails on time (benchmarks print
figures); it exits 1 only when something broke.

    PYHOT_BIN=build/bin /usr/bin/python3 tests/bench/status.py [--runs 3] [--seconds 5]
        [--clients 32] [--cmd status] [--keep]
"""

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import cpu_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("PYHOT_BIN") or os.path.join(REPO, "build", "bin")
JOB = "import time; time.sleep(2)"


def machine():
    model = cpu_model()
    return "%s, %d cores, %s %s %s, Python %s" % (
        model, os.cpu_count(), platform.system(), platform.release(), platform.machine(),
        platform.python_version())


def load_generator(keep_dir):
    built = os.path.join(BIN, "status_load")
    if os.access(built, os.X_OK):
        return built
    out = os.path.join(keep_dir, "status_load")
    subprocess.run(["cc", "-O2", "-o", out, os.path.join(REPO, "tests", "bench", "status_load.c")],
                   check=True)
    return out


class Conn:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.file = self.sock.makefile("rwb")
        self.next_id = 0

    def call(self, cmd, **args):
        self.next_id += 1
        self.file.write(json.dumps(dict(id=self.next_id, cmd=cmd, **args)).encode() + b"\n")
        self.file.flush()
        while True:
            msg = json.loads(self.file.readline())
            if "event" not in msg:
                return msg

    def close(self):
        self.file.close()
        self.sock.close()


class Jobs:
    """Keeps a 2-second exec job running on the python thread until stopped."""

    def __init__(self, path):
        self.conn = Conn(path)
        self.stop = False
        self.done = 0
        self.errors = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop:
            r = self.conn.call("exec", code=JOB)
            if not r.get("ok"):
                self.errors.append(r)
                return
            self.done += 1

    def start(self, status_conn):
        self.thread.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            job = status_conn.call("status")["result"]["job"]
            if job and job["kind"] == "exec":
                return
            time.sleep(0.01)
        raise RuntimeError("the exec job did not start")

    def finish(self):
        self.stop = True
        self.thread.join(10)
        self.conn.close()


def run_load(gen, sock, args):
    argv = [gen, "--socket", sock, "--clients", str(args.clients), "--seconds", str(args.seconds),
            "--warmup", "1", "--cmd", args.cmd, "--json"]
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("status_load failed: %s %s" % (r.stdout, r.stderr))
    return json.loads(r.stdout), argv


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--cmd", default="status")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="pyhot-bench-")
    sockdir = os.path.join(tmp, "s")
    os.mkdir(sockdir, 0o700)
    root = os.path.join(tmp, "app")
    os.mkdir(root)
    with open(os.path.join(root, "app.py"), "w") as f:
        f.write("VALUE = 1\n")
    sock = os.path.join(sockdir, "pyhotd.sock")
    log = open(os.path.join(tmp, "pyhotd.stderr"), "wb")
    daemon_argv = [os.path.join(BIN, "pyhotd"), "--watch", root, "--socket", sock,
                   "--log-level", "warn"]
    daemon = subprocess.Popen(daemon_argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    results = []
    try:
        gen = load_generator(tmp)
        deadline = time.monotonic() + 10
        while True:
            try:
                ctl = Conn(sock)
                if ctl.call("status")["result"]["ready"]:
                    break
                ctl.close()
            except OSError:
                pass
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise RuntimeError("pyhotd did not start")
            time.sleep(0.05)

        print("machine:  %s" % machine())
        print("pyhotd:   %s" % " ".join(daemon_argv))
        argv = None
        for run in range(1, args.runs + 1):
            idle, argv = run_load(gen, sock, args)
            jobs = Jobs(sock)
            jobs.start(ctl)
            during, _ = run_load(gen, sock, args)
            still = ctl.call("status")["result"]["job"]
            jobs.finish()
            if jobs.errors or not still:
                raise RuntimeError("the job did not run throughout: %r %r" % (jobs.errors, still))
            results.append((run, idle, during))
        print("load:     %s" % " ".join(argv))
        print("job:      exec %r, back to back, during the whole 'job' phase" % JOB)
        print()
        print("%-4s %-6s %10s %9s %9s %9s %9s %9s" % ("run", "phase", "requests/s", "p50 us",
                                                     "p90 us", "p99 us", "p99.9 us", "max us"))
        for run, idle, during in results:
            for name, r in (("idle", idle), ("job", during)):
                print("%-4d %-6s %10.0f %9.1f %9.1f %9.1f %9.1f %9.1f" % (
                    run, name, r["rate"], r["p50_us"], r["p90_us"], r["p99_us"], r["p999_us"],
                    r["max_us"]))
        print()
        for name, index in (("idle", 1), ("job", 2)):
            rates = [r[index]["rate"] for r in results]
            p99s = [r[index]["p99_us"] for r in results]
            met = min(rates) >= 30000 and max(p99s) < 1000
            print("goal (>= 30000 requests/s, p99 < 1000 us), %s: %s (worst run: %.0f requests/s, "
                  "p99 %.1f us)" % (name, "met" if met else "MISSED", min(rates), max(p99s)))
        ctl.close()
    finally:
        daemon.terminate()
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()
        if args.keep:
            print("kept %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as e:
        print("status.py: %s" % e, file=sys.stderr)
        sys.exit(1)
