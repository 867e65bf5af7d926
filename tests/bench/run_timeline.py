#!/usr/bin/python3
"""Where an isolated or sandboxed run's time goes, from the scheduler's point of view.

Runs `pyhotctl run --sandbox hello.py` (and `--isolate`) back to back under hyperfine while
`perf record` takes the scheduler's events of the whole machine (sched_switch,
sched_wakeup, sched_process_fork/exec/exit), then cuts each run into four segments:

  client start -> request sent      pyhotctl's exec until it first waits for the reply
  request -> child exit             the daemon's threads and the hand-off, then the ready
                                    child: the rest of its cage, the script; split (*) for
                                    the runs whose child was asleep when the request came
                                    (woken: the hand-off), the others' still preparing
  child exit -> client exit         the daemon sees the end, answers; pyhotctl exits

and prints each segment's median and mean, and how long the daemon's threads waited
between being woken and running (the share of waits over 0.3 ms, and what ran instead).
A diagnostic, not a goal: docs/benchmarks.md uses it to say where the time goes. A run
whose events cannot be matched (a wake-up the daemon's thread did not need, a child that
ran before the trace began) is left out; the count says how many were kept.

    PYHOT_BIN=build/bin /usr/bin/python3 tests/bench/run_timeline.py [--runs 200]

Needs perf (Debian linux-perf) and hyperfine (`make deps-bench`), and root for perf's
machine-wide scheduler events.
"""

import argparse
import collections
import os
import re
import shutil
import statistics
import subprocess
import sys

from benchlib import cpu_model, run_daemon

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("PYHOT_BIN") or os.path.join(REPO, "build", "bin")
EVENTS = ("sched:sched_switch,sched:sched_wakeup,sched:sched_process_fork,"
          "sched:sched_process_exec,sched:sched_process_exit")
EVENT = re.compile(r"\s*(\S+)\s+(\d+)/(\d+)\s+([\d.]+):\s+sched:(\w+):\s*(.*)")


def record(command, runs, data):
    subprocess.run(["perf", "record", "-q", "-e", EVENTS, "-a", "-o", data, "--",
                    "hyperfine", "-N", "--warmup", "3", "--runs", str(runs), "--style", "none",
                    command], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    text = subprocess.run(["perf", "script", "-i", data, "-F", "comm,pid,tid,time,event,trace"],
                          capture_output=True, text=True, check=True).stdout
    events = []
    for line in text.splitlines():
        m = EVENT.match(line)
        if m:
            events.append((float(m.group(4)), m.group(1), int(m.group(2)), int(m.group(3)),
                           m.group(5), m.group(6)))
    return events


def daemon_threads(events):
    """(pid, the forking thread's tid): the thread that forks the most ready children."""
    forks = collections.Counter((pid, tid) for _, comm, pid, tid, event, _ in events
                                if event == "sched_process_fork" and comm == "pyhotd")
    return forks.most_common(1)[0][0]


def segments(events, daemon_pid):
    children = set()
    for _, comm, pid, _, event, trace in events:
        if event == "sched_process_fork" and pid == daemon_pid:
            children.add(int(re.search(r"child_pid=(\d+)", trace).group(1)))
    runs = {}
    for t, comm, pid, tid, event, trace in events:
        if event == "sched_process_exec" and "pyhotctl" in trace:
            runs[pid] = {"start": t}
        elif event == "sched_switch" and comm == "pyhotctl" and pid in runs:
            if "sent" not in runs[pid] and "prev_state=S" in trace:
                runs[pid]["sent"] = t
        elif event == "sched_wakeup" and comm == "pyhotd" and pid == daemon_pid:
            woken = int(re.search(r" pid=(\d+)", trace).group(1))
            if woken in children:
                waiting = [r for r in runs.values()
                           if "sent" in r and "child" not in r and "end" not in r]
                if len(waiting) == 1:
                    waiting[0].update(child=woken, woken=t)
        elif event == "sched_process_exit":
            gone = int(re.search(r" pid=(\d+)", trace).group(1))
            if comm == "pyhotctl" and gone in runs:
                runs[gone]["end"] = t
            elif gone in children:
                # The run's child: a child of the daemon that ends while one client waits.
                waiting = [r for r in runs.values()
                           if "sent" in r and "child_exit" not in r and "end" not in r]
                if len(waiting) == 1 and waiting[0].get("child", gone) == gone:
                    waiting[0]["child_exit"] = t
    keys = ("start", "sent", "child_exit", "end")
    return [r for r in runs.values() if all(k in r for k in keys) and
            all(r[a] <= r[b] for a, b in zip(keys, keys[1:]))]


def waits(events, tids):
    """Wake-up -> running delays of the daemon's threads (ms), and what ran instead when
    one waited over 0.3 ms."""
    delays, instead, pending = [], collections.Counter(), {}
    for t, comm, pid, tid, event, trace in events:
        if event == "sched_wakeup":
            woken = int(re.search(r" pid=(\d+)", trace).group(1))
            if woken in tids:
                pending[woken] = t
        elif event == "sched_switch":
            nxt = int(re.search(r"next_pid=(\d+)", trace).group(1))
            if nxt in pending:
                delay = (t - pending.pop(nxt)) * 1000
                delays.append(delay)
                if delay > 0.3:
                    instead[re.search(r"prev_comm=(\S+)", trace).group(1)] += 1
    return delays, instead


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--prefork", type=int, help="[run] prefork (default: the daemon's)")
    args = ap.parse_args()
    for tool in ("perf", "hyperfine"):
        if not shutil.which(tool):
            print("%s is missing (`make deps-bench`)" % tool, file=sys.stderr)
            return 1
    config = "[run]\nprefork = %d\n" % args.prefork if args.prefork is not None else ""
    with run_daemon(BIN, "pyhot-bench-timeline-", {"hello.py": "print('hello')\n"}, config) as d:
        print("run timeline: %s, %d CPUs, Linux %s, %d runs each, back to back (hyperfine -N), "
              "[run] prefork %s" % (cpu_model(), os.cpu_count(), os.uname().release, args.runs,
                                    args.prefork if args.prefork is not None else "default"))
        for kind in ("sandbox", "isolate"):
            command = "%s --socket %s run --%s --cwd %s %s" % (d.ctl, d.sock, kind, d.tmp,
                                                               d.path("hello.py"))
            subprocess.run(command.split(), check=True, stdout=subprocess.DEVNULL)
            events = record(command, args.runs, d.path("perf-%s.data" % kind))
            daemon_pid, python_tid = daemon_threads(events)
            runs = segments(events, daemon_pid)
            print("\nrun --%s: %d runs matched (of %d, hyperfine's 3 warm-ups included); median "
                  "(mean) ms" % (kind, len(runs), args.runs + 3))
            for a, b, name in (("start", "sent", "client start -> request sent"),
                               ("sent", "child_exit", "request -> child exit"),
                               ("sent", "woken", "  request -> child woken *"),
                               ("woken", "child_exit", "  child woken -> child exit *"),
                               ("child_exit", "end", "child exit -> client exit"),
                               ("start", "end", "total (exec to exit)")):
                spans = [(r[b] - r[a]) * 1000 for r in runs if a in r and b in r]
                if spans:
                    print("  %-32s %.3f (%.3f)%s" % (
                        name, statistics.median(spans), statistics.mean(spans),
                        "  [%d runs]" % len(spans) if "*" in name else ""))
            delays, instead = waits(events, {daemon_pid, python_tid})
            if delays:
                print("  daemon threads, woken -> running: median %.3f ms, %.0f%% over 0.3 ms "
                      "(ran instead: %s)" % (statistics.median(delays),
                                            100 * sum(d > 0.3 for d in delays) / len(delays),
                                            ", ".join("%s %d" % kv for kv in instead.most_common(4))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
