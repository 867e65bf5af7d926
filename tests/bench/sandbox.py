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

Then the same four again with this file's own timer, interleaved: one run of each command
per round, so that a load that comes and goes (a shared machine) weighs on all four alike;
medians. It prints both sets of figures, the ratio bwrap / sandbox against the goal (at
least 5x) and the sandbox's cost over --isolate against the goal (at most 3 ms), the machine
and the exact commands. It never fails on time; it exits 1 only when something broke.

    PYHOT_BIN=build/bin /usr/bin/python3 tests/bench/sandbox.py [--runs 100] [--own-timer]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

from benchlib import cpu_model, cpu_ticks, hyperfine, run_daemon, steal_share

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("PYHOT_BIN") or os.path.join(REPO, "build", "bin")
PYTHON = "/usr/bin/python3"
GOAL_RATIO = 5.0      # at least this many times faster than bubblewrap
GOAL_OVER_MS = 3.0    # at most this much over --isolate


def interleaved(commands, runs):
    """(mean, median, stdev) of each command, timed one run of each per round."""
    argvs = [cmd.split() for cmd in commands]
    times = [[] for _ in commands]
    for round_ in range(runs + 3):
        for argv, series in zip(argvs, times):
            t0 = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
            if round_ >= 3:  # 3 warm-up rounds
                series.append(time.perf_counter() - t0)
    return [(statistics.mean(t), statistics.median(t), statistics.stdev(t)) for t in times]


def report(title, results, key):
    print(title)
    for name, (mean, median, sd) in zip(("run --sandbox", "bwrap python3", "cold python3",
                                         "run --isolate"), results):
        print("  %-14s mean %7.2f ms  median %7.2f ms  sd %6.2f ms" % (name, mean * 1000,
                                                                      median * 1000, sd * 1000))
    sandbox, bw, _, isolate = (r[key] * 1000 for r in results)
    ratio = bw / sandbox
    over = sandbox - isolate
    what = "means" if key == 0 else "medians"
    print("  bwrap / sandbox (%s): %.1fx (goal >= %.0fx: %s)" % (
        what, ratio, GOAL_RATIO, "met" if ratio >= GOAL_RATIO else "MISSED"))
    print("  sandbox - isolate (%s): %+.2f ms (goal <= %.0f ms: %s)" % (
        what, over, GOAL_OVER_MS, "met" if over <= GOAL_OVER_MS else "MISSED"))


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
    with run_daemon(BIN, "pyhot-bench-sandbox-", {"hello.py": "print('hello')\n"}) as d:
        ctl, sock, tmp, hello = d.ctl, d.sock, d.tmp, d.path("hello.py")
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
        load_before, ticks_before = os.getloadavg()[0], cpu_ticks()
        hf = hyperfine(commands, args.runs, tmp) if use_hf else None
        mixed = interleaved(commands, args.runs)
        print("\nsandbox bench: %s, %d CPUs, Linux %s, %d runs each, load average %.2f "
              "before, %.2f after, %.1f%% of the CPU time stolen by the host" % (
                  cpu_model(), os.cpu_count(), os.uname().release, args.runs, load_before,
                  os.getloadavg()[0], 100 * steal_share(ticks_before, cpu_ticks())))
        if hf:
            report("hyperfine --warmup 3 -N, one command after the other:", hf, 0)
        report("own timer, interleaved (one run of each per round):", mixed, 1)
        print("\ncommands:")
        for c in commands:
            print("  " + c)
    return 0


if __name__ == "__main__":
    sys.exit(main())
