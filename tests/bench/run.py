#!/usr/bin/python3
"""Cold python3 against `pyhotctl run` in the warm interpreter (issue 6).

Two scripts, each timed three ways side by side in one hyperfine invocation (or, without
hyperfine, this file's own timer: N runs after 3 warm-up runs, mean and median):

  (a) hello.py: prints one line;
  (b) heavy.py: imports email, asyncio, json, decimal, http.server, xml.etree, argparse,
      logging, unittest, then prints one line. The daemon preloads those modules
      ([python] preload), so a warm run pays no import cost.

Commands: `/usr/bin/python3 SCRIPT`, `pyhotctl run SCRIPT`, `pyhotctl run --isolate
SCRIPT` (a child forked from the warm interpreter). It prints the mean times, the ratios
cold / warm against the goals ((a) >= 7x, (b) >= 50x), the isolated-run overhead, the
machine and the commands. It never fails on time; it exits 1 only when something broke.

    PYHOT_BIN=build/bin /usr/bin/python3 tests/bench/run.py [--runs 50] [--own-timer]
"""

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

from benchlib import cpu_model, hyperfine, run_daemon

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("PYHOT_BIN") or os.path.join(REPO, "build", "bin")
PYTHON = "/usr/bin/python3"
HEAVY = ["email", "email.mime.text", "asyncio", "json", "decimal", "http.server",
         "xml.etree.ElementTree", "argparse", "logging", "unittest"]
GOALS = {"hello": 7.0, "heavy": 50.0}


def machine():
    model = cpu_model()
    return "%s, %d CPUs, %s %s, Python %s" % (model, os.cpu_count(), platform.system(),
                                             platform.release(), platform.python_version())


def own_timer(commands, runs):
    means = []
    for cmd in commands:
        argv = cmd.split()
        for _ in range(3):
            subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
            times.append(time.perf_counter() - t0)
        means.append((statistics.mean(times), statistics.median(times), statistics.stdev(times)))
    return means


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--own-timer", action="store_true", help="do not use hyperfine")
    args = ap.parse_args()
    use_hf = not args.own_timer and shutil.which("hyperfine")
    scripts = {"hello.py": "print('hello')\n",
               "heavy.py": "".join("import %s\n" % m for m in HEAVY) + "print('heavy')\n"}
    config = "[python]\npreload = %s\n" % ", ".join(HEAVY)
    with run_daemon(BIN, "pyhot-bench-run-", scripts, config,
                    ready=("exec", "import decimal, unittest")) as d:
        ctl, sock, tmp = d.ctl, d.sock, d.tmp
        hello, heavy = d.path("hello.py"), d.path("heavy.py")
        rows = []
        for name, script in (("hello", hello), ("heavy", heavy)):
            commands = ["%s %s" % (PYTHON, script), "%s --socket %s run %s" % (ctl, sock, script),
                        "%s --socket %s run --isolate %s" % (ctl, sock, script)]
            means = hyperfine(commands, args.runs, tmp) if use_hf else own_timer(commands, args.runs)
            rows.append((name, commands, means))
        print("\nrun bench: %s, %d runs each, timer: %s" % (machine(), args.runs,
                                                           "hyperfine --warmup 3 -N" if use_hf else "own"))
        print("%-6s %12s %12s %12s %10s %6s %10s" % ("script", "cold ms", "run ms", "isolate ms",
                                                    "ratio", "goal", "isolate+ms"))
        for name, commands, means in rows:
            cold, warm, iso = (m[0] * 1000 for m in means)
            ratio = cold / warm
            print("%-6s %12.2f %12.2f %12.2f %9.1fx %5.0fx %10.2f  %s" % (
                name, cold, warm, iso, ratio, GOALS[name], iso - warm,
                "met" if ratio >= GOALS[name] else "MISSED"))
        print("\ncommands (script paths under %s):" % tmp)
        for name, commands, _ in rows:
            for c in commands:
                print("  " + c)
    return 0


if __name__ == "__main__":
    sys.exit(main())
