#!/usr/bin/python3
"""Sandboxed runs against bubblewrap, cold python3 and an isolated run (issue 14).

One script, hello.py (prints one line), timed four ways side by side in one hyperfine
invocation (or, without hyperfine, this file's own timer: N runs after 3 warm-up runs):

  pyhotctl run --sandbox hello.py    a child forked from the warm interpreter, caged
                                     (network namespace, Landlock, no privileges, process
                                     limit, seccomp; docs/run.md "Sandbox")
  bwrap --unshare-all --die-with-parent --ro-bind / / /usr/bin/python3 hello.py
                                     the peer: a cold interpreter in bubblewrap's namespaces
  /usr/bin/python3 hello.py          cold, no sandbox
  pyhotctl run --isolate hello.py    the same fork without the cage

It prints the means, the ratio bwrap / sandbox against the goal (at least 5x) and the
sandbox's cost over --isolate against the goal (at most 3 ms), the machine and the exact
commands. It never fails on time; it exits 1 only when something broke.

    PYHOT_BIN=build/bin /usr/bin/python3 tests/bench/sandbox.py [--runs 100] [--own-timer]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import cpu_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("PYHOT_BIN") or os.path.join(REPO, "build", "bin")
PYTHON = "/usr/bin/python3"
GOAL_RATIO = 5.0      # at least this many times faster than bubblewrap
GOAL_OVER_MS = 3.0    # at most this much over --isolate


def own_timer(commands, runs):
    results = []
    for cmd in commands:
        argv = cmd.split()
        for _ in range(3):
            subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
            times.append(time.perf_counter() - t0)
        results.append((statistics.mean(times), statistics.median(times), statistics.stdev(times)))
    return results


def hyperfine(commands, runs, tmp):
    out = os.path.join(tmp, "hf.json")
    subprocess.run(["hyperfine", "--warmup", "3", "-N", "--runs", str(runs), "--export-json", out,
                    "--style", "basic"] + commands, check=True, stdout=sys.stderr)
    with open(out) as f:
        return [(r["mean"], r["median"], r["stddev"]) for r in json.load(f)["results"]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--own-timer", action="store_true", help="do not use hyperfine")
    args = ap.parse_args()
    bwrap = shutil.which("bwrap")
    if not bwrap:
        print("bwrap is missing (Debian package bubblewrap; `make deps-bench`)", file=sys.stderr)
        return 1
    use_hf = not args.own_timer and shutil.which("hyperfine")
    # Under /tmp and readable by all: a root daemon's sandboxed runs are nobody.
    tmp = tempfile.mkdtemp(prefix="pyhot-bench-sandbox-")
    os.chmod(tmp, 0o755)
    sockdir = os.path.join(tmp, "s")
    os.mkdir(sockdir, 0o700)
    sock = os.path.join(sockdir, "pyhotd.sock")
    hello = os.path.join(tmp, "hello.py")
    with open(hello, "w") as f:
        f.write("print('hello')\n")
    conf = os.path.join(tmp, "pyhotd.conf")
    with open(conf, "w") as f:
        f.write("[daemon]\nsocket = %s\nlog_level = warn\n" % sock)
    daemon = subprocess.Popen([os.path.join(BIN, "pyhotd"), "--config", conf],
                              stderr=open(os.path.join(tmp, "pyhotd.log"), "w"))
    ctl = os.path.join(BIN, "pyhotctl")
    try:
        deadline = time.monotonic() + 10
        while subprocess.run([ctl, "--socket", sock, "ping"], capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                print("pyhotd did not start", file=sys.stderr)
                return 1
            time.sleep(0.05)
        check = subprocess.run([ctl, "--socket", sock, "run", "--sandbox", "--cwd", tmp, hello],
                               capture_output=True, text=True)
        if check.returncode != 0 or check.stdout != "hello\n":
            print("the sandboxed run failed: %d %s" % (check.returncode, check.stderr), file=sys.stderr)
            return 1
        commands = [
            "%s --socket %s run --sandbox --cwd %s %s" % (ctl, sock, tmp, hello),
            "%s --unshare-all --die-with-parent --ro-bind / / %s %s" % (bwrap, PYTHON, hello),
            "%s %s" % (PYTHON, hello),
            "%s --socket %s run --isolate --cwd %s %s" % (ctl, sock, tmp, hello),
        ]
        results = hyperfine(commands, args.runs, tmp) if use_hf else own_timer(commands, args.runs)
        sandbox, bw, cold, isolate = (r[0] * 1000 for r in results)
        print("\nsandbox bench: %s, %d CPUs, %d runs each, timer: %s" % (
            cpu_model(), os.cpu_count(), args.runs, "hyperfine --warmup 3 -N" if use_hf else "own"))
        for name, (mean, median, sd) in zip(("run --sandbox", "bwrap python3", "cold python3",
                                             "run --isolate"), results):
            print("  %-14s mean %7.2f ms  median %7.2f ms  sd %6.2f ms" % (name, mean * 1000,
                                                                          median * 1000, sd * 1000))
        ratio = bw / sandbox
        over = sandbox - isolate
        print("bwrap / sandbox: %.1fx (goal >= %.0fx: %s)" % (ratio, GOAL_RATIO,
                                                            "met" if ratio >= GOAL_RATIO else "MISSED"))
        print("sandbox - isolate: %+.2f ms (goal <= %.0f ms: %s)" % (over, GOAL_OVER_MS,
                                                                   "met" if over <= GOAL_OVER_MS else "MISSED"))
        print("\ncommands:")
        for c in commands:
            print("  " + c)
    finally:
        subprocess.run([ctl, "--socket", sock, "stop"], capture_output=True)
        daemon.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
