#!/usr/bin/python3
"""Watch setup on a large tree: time until watching, and memory, against inotifywait -r
and watchman, side by side in one run.

The tree (generated once under /tmp, reused by later runs, removed at the end unless
--keep-tree): 10,000 directories and 100,000 files (.py) by default, fan-out 22. Before
measuring, the tree is walked once so every subject finds the dentry cache warm.

Subjects, each started fresh, alternating, --runs times:
  pyhotd      pyhotd --watch TREE --no-import --log-level warn --socket S
              time: spawn -> its status answers "ready" with every directory watched
              (includes starting the interpreter; the baseline row is the same without
              --watch). Also its own figure: status.watch.setup_ms (the walk alone).
              RSS: VmRSS then; the goal compares it with the baseline's.
  inotifywait inotifywait -r -m TREE
              time: spawn -> "Watches established." on its stderr; RSS then.
  watchman    a private server (-U SOCK --statefile --no-save-state), started first;
              time: `watchman watch TREE` + `watchman clock TREE` (which waits until the
              crawl is done); RSS of the server then.

Goals (issue 4): pyhotd's time at most half of inotifywait's; pyhotd's RSS at most 8 MiB
above its RSS with no roots. Prints figures; never fails on time.

Usage: /usr/bin/python3 tests/bench/watch_setup.py [--tree DIR] [--dirs N] [--files N]
       [--runs N] [--keep-tree] [--no-peers]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from watch_common import (DEFAULT_TREE, Pyhotd, command_line, count_dirs, machine,  # noqa: E402
                          make_tree, rss_kib)


def run_pyhotd(tree, workdir, expected_dirs):
    args = ["--no-import", "--log-level", "warn"]
    if tree:
        args += ["--watch", tree]
    d = Pyhotd(args, workdir, "pyhotd-%s" % ("tree" if tree else "base"))
    try:
        d.connect()
        st = d.wait_ready()
        t = time.monotonic() - d.started
        if tree and st["watched_dirs"] != expected_dirs:
            raise SystemExit("pyhotd watches %d directories, expected %d" %
                             (st["watched_dirs"], expected_dirs))
        return {"time": t, "rss": rss_kib(d.proc.pid),
                "setup_ms": st["watch"]["setup_ms"] if tree else 0.0}
    finally:
        d.stop()


def run_inotifywait(tree):
    t0 = time.monotonic()
    p = subprocess.Popen(["inotifywait", "-r", "-m", tree], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        for line in p.stderr:
            if b"Watches established" in line:
                t = time.monotonic() - t0
                return {"time": t, "rss": rss_kib(p.pid)}
            if b"Failed" in line or b"upper limit" in line:
                raise SystemExit("inotifywait: %s" % line.decode(errors="replace"))
        raise SystemExit("inotifywait exited: %s" % p.wait())
    finally:
        p.kill()
        p.wait()


def run_watchman(tree, workdir):
    sock = os.path.join(workdir, "wm.sock")
    base = ["watchman", "-U", sock, "-o", os.path.join(workdir, "wm.log"),
            "--statefile", os.path.join(workdir, "wm.state"), "--pidfile",
            os.path.join(workdir, "wm.pid"), "-n", "--no-pretty"]
    out = subprocess.run(base + ["get-pid"], check=True, capture_output=True, text=True,
                         timeout=60)
    import json
    pid = json.loads(out.stdout)["pid"]
    try:
        t0 = time.monotonic()
        subprocess.run(base + ["watch", tree], check=True, capture_output=True, timeout=300)
        subprocess.run(base + ["clock", tree], check=True, capture_output=True, timeout=300)
        t = time.monotonic() - t0
        return {"time": t, "rss": rss_kib(pid)}
    finally:
        subprocess.run(base + ["shutdown-server"], capture_output=True, timeout=60)
        for _ in range(500):
            if not os.path.exists("/proc/%d" % pid):
                break
            time.sleep(0.01)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", default=DEFAULT_TREE)
    ap.add_argument("--dirs", type=int, default=10000)
    ap.add_argument("--files", type=int, default=100000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep-tree", action="store_true")
    ap.add_argument("--no-peers", action="store_true", help="pyhotd only")
    a = ap.parse_args()

    print("machine:", machine())
    print("command:", command_line())
    t0 = time.monotonic()
    tree = make_tree(a.tree, a.dirs, a.files)
    expected = count_dirs(tree)   # the walk also warms the dentry cache
    print("tree: %s, %d directories (root included), %d files; ready in %.1f s"
          % (tree, expected, a.files, time.monotonic() - t0))
    peers = []
    if not a.no_peers:
        for tool in ("inotifywait", "watchman"):
            if shutil.which(tool):
                peers.append(tool)
            else:
                print("(%s not installed: skipped; Debian package %s)" %
                      (tool, "inotify-tools" if tool == "inotifywait" else tool))
    workdir = tempfile.mkdtemp(prefix="pyhot-bench-")
    results = {"pyhotd (no roots)": [], "pyhotd": []}
    for p in peers:
        results[p] = []
    try:
        for run in range(a.runs):
            results["pyhotd (no roots)"].append(run_pyhotd(None, workdir, expected))
            results["pyhotd"].append(run_pyhotd(tree, workdir, expected))
            if "inotifywait" in peers:
                results["inotifywait"].append(run_inotifywait(tree))
            if "watchman" in peers:
                results["watchman"].append(run_watchman(tree, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if not a.keep_tree:
            shutil.rmtree(tree, ignore_errors=True)

    def med(name, key):
        return statistics.median(r[key] for r in results[name])

    print()
    print("%-20s %6s %14s %14s %10s" % ("subject", "runs", "time (s) med", "min..max", "RSS MiB"))
    for name, rows in results.items():
        times = [r["time"] for r in rows]
        print("%-20s %6d %14.3f %6.3f..%-6.3f %10.1f" % (
            name, len(rows), statistics.median(times), min(times), max(times),
            med(name, "rss") / 1024.0))
    setup = [r["setup_ms"] for r in results["pyhotd"]]
    print("pyhotd's own walk (status.watch.setup_ms): median %.1f ms (min %.1f, max %.1f)"
          % (statistics.median(setup), min(setup), max(setup)))
    base_t, tree_t = med("pyhotd (no roots)", "time"), med("pyhotd", "time")
    delta_rss = (med("pyhotd", "rss") - med("pyhotd (no roots)", "rss")) / 1024.0
    print("pyhotd time with the tree minus without: %.3f s" % (tree_t - base_t))
    print("pyhotd RSS with the tree minus without: %.1f MiB (goal: <= 8 MiB: %s)"
          % (delta_rss, "met" if delta_rss <= 8 else "NOT met"))
    if "inotifywait" in results:
        iw = med("inotifywait", "time")
        print("time ratio pyhotd / inotifywait: %.2f (spawn to watching); %.2f (the walk "
              "alone, setup_ms); goal <= 0.5" % (tree_t / iw, statistics.median(setup) / 1e3 / iw))
    if "watchman" in results:
        print("time ratio pyhotd / watchman: %.2f" % (tree_t / med("watchman", "time")))


if __name__ == "__main__":
    main()
