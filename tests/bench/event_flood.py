#!/usr/bin/python3
"""pyhotd's memory under a flood of large events: RSS before and after N reloads that each
fail with a large message, while one subscriber never reads and one reads everything.

What it measures: VmRSS of the daemon (/proc/PID/status) right after start, and its peak,
sampled after every 10th failure, over --reloads explicit reloads (the reload command) of a
module that raises RuntimeError with a --message-kib message. One subscriber stops reading
from the start (the daemon drops it past max_output_bytes), one reads every event. It
prints the start, the peak and the growth, and how many events the history kept. The goal
set by issue 15: the daemon stays under its start RSS + 64 MiB for 300 reloads of a 48 KiB
message (tests/integration/test_control_limits.py checks that bound); this prints the
figure for any build, so a build before the history was bounded in bytes can be measured
beside it (PYHOT_BIN=that/build/bin).

    PYHOT_BIN=build/bin /usr/bin/python3 tests/bench/event_flood.py [--reloads 300]
        [--message-kib 48]
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
import time

from benchlib import cpu_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("PYHOT_BIN") or os.path.join(REPO, "build", "bin")


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Conn:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(path)
        self.buf = b""
        self.next_id = 0

    def line(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError("pyhotd closed the connection")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def call(self, cmd, **args):
        self.next_id += 1
        self.sock.sendall(json.dumps(dict(args, id=self.next_id, cmd=cmd)).encode() + b"\n")
        while True:
            message = self.line()
            if message.get("id") == self.next_id and "ok" in message:
                return message


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reloads", type=int, default=300)
    parser.add_argument("--message-kib", type=int, default=48)
    opts = parser.parse_args()
    base = tempfile.mkdtemp(prefix="pyhot-flood-")
    root = os.path.join(base, "app")
    os.mkdir(root)
    os.mkdir(os.path.join(base, "run"), 0o700)
    sock = os.path.join(base, "run", "pyhotd.sock")
    with open(os.path.join(root, "big.py"), "w") as f:
        f.write("X = 1\n")
    proc = subprocess.Popen([os.path.join(BIN, "pyhotd"), "--watch", root, "--socket", sock],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                c = Conn(sock)
                if c.call("status")["result"]["ready"]:
                    break
                c.sock.close()
            except (OSError, EOFError):
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                sys.exit("pyhotd did not start")
            time.sleep(0.05)
        start = rss_kib(proc.pid)
        stuck = Conn(sock)
        stuck.call("subscribe")
        reader = Conn(sock)
        reader.call("subscribe")
        with open(os.path.join(root, "big.py"), "w") as f:
            f.write("X = 2\nraise RuntimeError('x' * %d)\n" % (opts.message_kib * 1024))
        peak = start
        began = time.monotonic()
        for i in range(opts.reloads):
            r = c.call("reload", targets=["big"])
            if r.get("ok") is not False:
                sys.exit("the reload did not fail: %r" % r)
            while reader.line().get("event") != "batch":
                pass
            if i % 10 == 0:
                peak = max(peak, rss_kib(proc.pid))
        peak = max(peak, rss_kib(proc.pid))
        elapsed = time.monotonic() - began
        history = c.call("history", n=1000)["result"]
        print("machine: %s, %d cores, %s %s, Python %s" % (
            cpu_model(), os.cpu_count(), platform.system(), platform.release(),
            platform.python_version()))
        print("pyhotd: %s" % os.path.join(BIN, "pyhotd"))
        print("%d failed reloads with a %d KiB message in %.1f s" % (
            opts.reloads, opts.message_kib, elapsed))
        print("RSS: start %.1f MiB, peak %.1f MiB, growth %.1f MiB (goal: < 64 MiB)" % (
            start / 1024, peak / 1024, (peak - start) / 1024))
        print("history response: %d events (truncated: %s)" % (
            len(history["events"]), history.get("truncated")))
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
