#!/usr/bin/python3
"""Idle: what pyhotd costs while nothing changes, with a large tree watched.

pyhotd watches the generated tree (10,000 directories, 100,000 files by default; see
watch_setup.py) with --no-import. Once ready, the bench waits 2 s, then reads over
--seconds (default 30): the CPU time of the whole process (utime + stime from
/proc/PID/stat, in clock ticks) and its wake-ups (context switches, voluntary and
involuntary, summed over every thread from /proc/PID/task/*/status). inotifywait -r on the
same tree is measured the same way beside it, for reference.

Goal (issue 4): zero wake-ups (no polling). Prints figures; never fails on time.

Usage: /usr/bin/python3 tests/bench/watch_idle.py [--seconds S] [--tree DIR] [--keep-tree]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from watch_common import (DEFAULT_TREE, Pyhotd, command_line, cpu_ticks, machine,  # noqa: E402
                          make_tree, wakeups)


def measure(pid, seconds):
    c0, w0 = cpu_ticks(pid), wakeups(pid)
    time.sleep(seconds)
    return cpu_ticks(pid) - c0, wakeups(pid) - w0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--tree", default=DEFAULT_TREE)
    ap.add_argument("--dirs", type=int, default=10000)
    ap.add_argument("--files", type=int, default=100000)
    ap.add_argument("--keep-tree", action="store_true")
    a = ap.parse_args()
    print("machine:", machine())
    print("command:", command_line())
    tree = make_tree(a.tree, a.dirs, a.files)
    hz = os.sysconf("SC_CLK_TCK")
    work = tempfile.mkdtemp(prefix="pyhot-idle-")
    try:
        d = Pyhotd(["--watch", tree, "--no-import", "--log-level", "warn"], work)
        try:
            d.connect()
            st = d.wait_ready()
            d.sock.close()     # no client: nothing but the watcher is left to wake it
            d.sock = None
            time.sleep(2)
            ticks, wakes = measure(d.proc.pid, a.seconds)
            threads = len(os.listdir("/proc/%d/task" % d.proc.pid))
        finally:
            d.connect()
            d.stop()
        print("pyhotd: %d directories watched, %d threads; over %.0f s idle: CPU %.3f s "
              "(%d ticks of 1/%d s), %d wake-ups" % (st["watched_dirs"], threads, a.seconds,
                                                     ticks / hz, ticks, hz, wakes))
        if shutil.which("inotifywait"):
            p = subprocess.Popen(["inotifywait", "-r", "-m", tree], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
            try:
                for line in p.stderr:
                    if b"Watches established" in line:
                        break
                time.sleep(2)
                ticks_i, wakes_i = measure(p.pid, a.seconds)
            finally:
                p.kill()
                p.wait()
            print("inotifywait -r -m: over %.0f s idle: CPU %.3f s, %d wake-ups"
                  % (a.seconds, ticks_i / hz, wakes_i))
        print("goal (zero wake-ups): %s" % ("met" if wakes == 0 else "NOT met (%d)" % wakes))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not a.keep_tree:
            shutil.rmtree(tree, ignore_errors=True)


if __name__ == "__main__":
    main()
