#!/usr/bin/python3
"""Reload engine benchmarks (issues: reload engine, 10). Prints figures; never fails on time.

(a) One module (25 decorated functions, 25 classes) with one function's body edited:
    its reload through the engine (the whole batch: read, hash, diff or compile, plan, run,
    commit) against a plain `importlib.reload` of an identical copy after the same edit,
    both in pyhotd's interpreter (plain reload compiles the source, as it must after a real
    edit). [reload] mode = definitions (the default; goal: at most 1.0x), and (a') mode =
    module, for reference.
(c) The same for a module of about --lines lines (default 2,000; goal: under 5 ms).
(b) A chain of N modules (default 200) where each imports the previous: time from the
    edit of the first to the end of the batch that reloads all N in dependency order, as
    reported by the batch event (latency_ms) and as seen by the bench (wall clock until
    the batch event arrives).

Usage: /usr/bin/python3 tests/bench/reload_engine.py [--runs N] [--chain N] [--lines N]
Binaries come from $PYHOT_BIN (default: build/bin next to this repository).
"""
import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import cpu_model, percentile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("PYHOT_BIN", os.path.join(REPO, "build", "bin"))


def machine():
    model = cpu_model("unknown")
    return "%s, %d cores, Linux %s, Python %s" % (model, os.cpu_count(), platform.release(),
                                                  platform.python_version())


class Client:
    def __init__(self, path):
        deadline = time.monotonic() + 15
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.file = self.sock.makefile("rwb")
        self.next_id = 0

    def request(self, cmd, **args):
        self.next_id += 1
        args.update(id=self.next_id, cmd=cmd)
        self.file.write(json.dumps(args).encode() + b"\n")
        self.file.flush()
        while True:
            message = json.loads(self.file.readline())
            if message.get("id") == self.next_id:
                return message

    def event(self, predicate, timeout=60):
        self.sock.settimeout(timeout)
        while True:
            message = json.loads(self.file.readline())
            if "event" in message and predicate(message):
                return message


def start_daemon(root, sock, settle, config=None):
    log = open(os.path.join(os.path.dirname(sock), "pyhotd.log"), "w")
    argv = [os.path.join(BIN, "pyhotd"), "--watch", root, "--socket", sock,
            "--settle-ms", str(settle), "--log-level", "warn"]
    if config:
        argv += ["--config", config]
    proc = subprocess.Popen(argv, stdout=log, stderr=log)
    return proc, Client(sock)


def stop_daemon(proc, client):
    try:
        client.request("shutdown")
    except OSError:
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


MODULE_HEAD = '''"""A module of realistic size: functions, classes with methods, a decorator."""
import functools

VERSION = {version}


def decorate(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)
    return wrapper

'''
FUNCTION = '''
@decorate
def function_{i}(x, y={i}):
    """Function {i}."""
    total = 0
    for k in range(x):
        total += k * y
    return total + VERSION
'''
CLASS = '''

class Class{i}:
    limit = {i}

    def __init__(self, value):
        self.value = value

    def method(self):
        return self.value + self.limit + VERSION

    @property
    def doubled(self):
        return self.value * 2

    @staticmethod
    def helper(x):
        return x + {i}
'''
MODULE = MODULE_HEAD + "".join(FUNCTION.format(i=i) + CLASS.format(i=i) for i in range(25))


BENCH_A = r'''
import importlib, importlib._bootstrap_external as bx, time, _pyhot_reload
import {engine_mod}, {plain_mod}
engine_path, plain_path = {engine_mod}.__file__, {plain_mod}.__file__
source = open(engine_path).read()
target = "    return total + VERSION\n"
assert source.count(target) == {functions}
nth = source.index(target, source.index("def function_7("))


def edited(run):
    # One function's body changes ({edit}); everything else stays as it was.
    if "{edit}" == "body":
        return source[:nth] + "    return total + VERSION + %d\n" % run + source[nth + len(target):]
    return source.replace("VERSION = 0", "VERSION = %d" % run)


# Wall time, and the reloading thread's CPU time (time.thread_time_ns), which other
# processes on the machine cannot inflate.
engine, plain, engine_cpu, plain_cpu = [], [], [], []
for i in range({runs}):
    with open(engine_path, "w") as f:
        f.write(edited(i + 1))
    c, t = time.thread_time_ns(), time.perf_counter_ns()
    result = _pyhot_reload.reload_batch([engine_path], [])
    engine.append((time.perf_counter_ns() - t) / 1e6)
    engine_cpu.append((time.thread_time_ns() - c) / 1e6)
    assert result["batch"]["result"] == "ok", result
    assert result["reloads"][0]["mode"] == "{mode}", result
    with open(plain_path, "w") as f:
        f.write(edited(i + 1))
    # The stdlib's own importlib.reload of an identical module: pyhot's loader hooks
    # (which compile watched modules themselves and route reloads through the engine) are
    # taken out for this call, so plain reload compiles the edited source and writes its
    # .pyc as it does in any Python process.
    hooks = bx.SourceLoader.get_code, bx._LoaderBasics.exec_module
    bx.SourceLoader.get_code = _pyhot_reload._original_get_code
    bx._LoaderBasics.exec_module = _pyhot_reload._original_exec_module
    try:
        c, t = time.thread_time_ns(), time.perf_counter_ns()
        importlib.reload({plain_mod})
        plain.append((time.perf_counter_ns() - t) / 1e6)
        plain_cpu.append((time.thread_time_ns() - c) / 1e6)
    finally:
        bx.SourceLoader.get_code, bx._LoaderBasics.exec_module = hooks
    if i == 0:
        first_engine, first_engine_cpu = engine.pop(), engine_cpu.pop()
        plain.pop(); plain_cpu.pop()
assert {engine_mod}.function_7(3, 1) == 3 + ({runs} if "{edit}" == "body" else 0) or "{edit}" != "body"
print(repr((engine, plain, engine_cpu, plain_cpu, first_engine, first_engine_cpu)))
'''


def big_module(lines):
    # About `lines` lines: functions of 10 lines and a class every tenth function.
    parts, count, i = [MODULE_HEAD.format(version=0)], MODULE_HEAD.count("\n"), 0
    while count < lines:
        parts.append(FUNCTION.format(i=i))
        count += FUNCTION.count("\n")
        if i % 10 == 9:
            parts.append(CLASS.format(i=i))
            count += CLASS.count("\n")
        i += 1
    return "".join(parts), i


def bench_cost(runs, source, functions, mode, edit):
    """(engine, plain, engine CPU, plain CPU, first engine, first engine CPU), ms: source
    reloaded `runs` times through the engine ([reload] mode) and with plain
    importlib.reload, each after the same edit of its own copy of the module."""
    work = tempfile.mkdtemp(prefix="pyhot-bench-")
    try:
        root = os.path.join(work, "root")
        sockdir = os.path.join(work, "run")
        os.mkdir(root)
        os.mkdir(sockdir, 0o700)
        for name in ("bench_engine", "bench_plain"):
            with open(os.path.join(root, name + ".py"), "w") as f:
                f.write(source)
        with open(os.path.join(work, "pyhotd.conf"), "w") as f:
            f.write("[reload]\nmode = %s\n" % mode)
        # The watcher is kept out of this measurement: the module is edited and reloaded
        # from inside the interpreter, so the watcher is paused (a long settle window no
        # longer holds a batch back: the adaptive settle sends a closed file at once).
        proc, client = start_daemon(root, os.path.join(sockdir, "pyhotd.sock"), 60000,
                                    os.path.join(work, "pyhotd.conf"))
        try:
            reply = client.request("pause")
            if not reply["ok"]:
                raise SystemExit("bench failed: pause: %s" % reply["error"])
            code = BENCH_A.format(runs=runs + 1, engine_mod="bench_engine", plain_mod="bench_plain",
                                  functions=functions, mode=mode, edit=edit)
            reply = client.request("exec", code=code)
            if not reply["ok"]:
                raise SystemExit("bench failed: %s" % reply["error"])
            figures = eval(reply["result"]["stdout"])
        finally:
            stop_daemon(proc, client)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return figures


def bench_chain(length, runs):
    work = tempfile.mkdtemp(prefix="pyhot-chain-")
    try:
        root = os.path.join(work, "root")
        sockdir = os.path.join(work, "run")
        os.mkdir(root)
        os.mkdir(sockdir, 0o700)
        for i in range(length):
            with open(os.path.join(root, "chain_%03d.py" % i), "w") as f:
                if i == 0:
                    f.write("VALUE = 0\n")
                else:
                    f.write("import chain_%03d as previous\nVALUE = previous.VALUE + 1\n" % (i - 1))
        proc, client = start_daemon(root, os.path.join(sockdir, "pyhotd.sock"), 0)
        walls, latencies, durations = [], [], []
        try:
            # Loaded first to last (importing the last one first would recurse N deep).
            reply = client.request("exec", code="for i in range(%d):\n    __import__('chain_%%03d' %% i)" % length)
            if not reply["ok"]:
                raise SystemExit("chain import failed: %s" % reply["error"])
            client.request("subscribe")
            first = os.path.join(root, "chain_000.py")
            for run in range(1, runs + 1):
                t = time.monotonic_ns()
                with open(first, "w") as f:
                    f.write("VALUE = %d\n" % run)
                batch = client.event(lambda e: e["event"] == "batch" and e["result"] != "skipped")
                walls.append((time.monotonic_ns() - t) / 1e6)
                if batch["result"] != "ok" or len(batch["modules"]) != length:
                    raise SystemExit("chain batch wrong: %s" % json.dumps(batch)[:500])
                if batch["modules"] != ["chain_%03d" % i for i in range(length)]:
                    raise SystemExit("chain reloaded out of order")
                latencies.append(batch["latency_ms"])
                durations.append(batch["duration_ms"])
                last = client.request("exec", code="__import__(\"chain_%03d\").VALUE" % (length - 1))
                expected = run + length - 1
                if last["result"]["value"] != str(expected):
                    raise SystemExit("chain value %s, expected %d" % (last["result"]["value"], expected))
        finally:
            stop_daemon(proc, client)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return walls, latencies, durations


def row(name, values):
    return "%-44s %8.3f %8.3f %8.3f %8.3f" % (name, statistics.median(values), percentile(values, 90),
                                              percentile(values, 99), statistics.mean(values))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50, help="reloads per figure (default 50)")
    parser.add_argument("--chain", type=int, default=200, help="modules in the chain (default 200)")
    parser.add_argument("--lines", type=int, default=2000, help="lines of the big module of (c) (default 2000)")
    parser.add_argument("--chain-runs", type=int, default=10, help="edits of the chain's first module (default 10)")
    args = parser.parse_args()
    print("machine: %s" % machine())
    print("command: %s" % " ".join([sys.executable] + sys.argv))
    print("pyhotd:  %s" % os.path.join(BIN, "pyhotd"))
    print()
    cases = [
        ("(a) one module (25 functions, 25 classes), one function's body edited",
         MODULE.format(version=0), 25, "definitions", "body", "goal: at most 1.00"),
        ("(a') the same, [reload] mode = module (the whole top level runs)",
         MODULE.format(version=0), 25, "module", "body", "for reference"),
    ]
    big, functions = big_module(args.lines)
    cases.append(("(c) one module of %d lines (%d functions), one function's body edited"
                  % (big.count("\n"), functions), big, functions, "definitions", "body",
                  "goal: engine p50 under 5 ms"))
    for title, source, functions, mode, edit, goal in cases:
        engine, plain, engine_cpu, plain_cpu, first, first_cpu = bench_cost(args.runs, source, functions, mode, edit)
        print("%s, %d reloads each, ms:" % (title, args.runs))
        print("%-44s %8s %8s %8s %8s" % ("", "p50", "p90", "p99", "mean"))
        print(row("plain importlib.reload, wall", plain))
        print(row("pyhot engine, wall", engine))
        print(row("plain importlib.reload, thread CPU", plain_cpu))
        print(row("pyhot engine, thread CPU", engine_cpu))
        ratio = statistics.median(engine) / statistics.median(plain)
        ratio_cpu = statistics.median(engine_cpu) / statistics.median(plain_cpu)
        print("engine / plain (p50): wall %.2f, thread CPU %.2f (%s); first reload of the module "
              "(builds its statement index): %.3f ms wall, %.3f ms CPU" % (ratio, ratio_cpu, goal, first, first_cpu))
        print()
    walls, latencies, durations = bench_chain(args.chain, args.chain_runs)
    print("(b) chain of %d modules, each importing the previous; %d edits of the first, ms:" % (args.chain, args.chain_runs))
    print("%-44s %8s %8s %8s %8s" % ("", "p50", "p90", "p99", "mean"))
    print(row("edit -> batch event received (bench clock)", walls))
    print(row("batch latency_ms (first event -> last reload)", latencies))
    print(row("batch duration_ms (engine)", durations))


if __name__ == "__main__":
    main()
