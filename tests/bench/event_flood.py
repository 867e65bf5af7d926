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
import shutil
import socket
import sys
import tempfile
import time

from watch_common import BIN, Pyhotd, machine, rss_kib


def subscriber(path):
    """A connection subscribed to every event (the response read)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)
    sock.connect(path)
    sock.sendall(b'{"id": 1, "cmd": "subscribe"}\n')
    reader = sock.makefile("rb")
    reader.readline()
    return sock, reader


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reloads", type=int, default=300)
    parser.add_argument("--message-kib", type=int, default=48)
    opts = parser.parse_args()
    base = tempfile.mkdtemp(prefix="pyhot-flood-")
    root = os.path.join(base, "app")
    os.mkdir(root)
    with open(os.path.join(root, "big.py"), "w") as f:
        f.write("X = 1\n")
    d = Pyhotd(["--watch", root], base)
    try:
        d.connect()
        d.wait_ready()
        start = rss_kib(d.proc.pid)
        stuck = subscriber(d.sock_path)      # never read from again
        _reader_sock, reader = subscriber(d.sock_path)
        d.call("exec", code="import big")   # modules load on demand
        with open(os.path.join(root, "big.py"), "w") as f:
            f.write("X = 2\nraise RuntimeError('x' * %d)\n" % (opts.message_kib * 1024))
        peak = start
        began = time.monotonic()
        for i in range(opts.reloads):
            d.sock.sendall(json.dumps({"id": 0, "cmd": "reload", "targets": ["big"]}).encode()
                           + b"\n")
            reply = d._line()
            if reply.get("ok") is not False:
                sys.exit("the reload did not fail: %r" % reply)
            while json.loads(reader.readline()).get("event") != "batch":
                pass
            if i % 10 == 0:
                peak = max(peak, rss_kib(d.proc.pid))
        peak = max(peak, rss_kib(d.proc.pid))
        elapsed = time.monotonic() - began
        history = d.call("history", n=1000)
        print("machine: %s" % machine())
        print("pyhotd: %s" % os.path.join(BIN, "pyhotd"))
        print("%d failed reloads with a %d KiB message in %.1f s" % (
            opts.reloads, opts.message_kib, elapsed))
        print("RSS: start %.1f MiB, peak %.1f MiB, growth %.1f MiB (goal: < 64 MiB)" % (
            start / 1024, peak / 1024, (peak - start) / 1024))
        print("history response: %d events (truncated: %s)" % (
            len(history["events"]), history.get("truncated")))
        stuck[0].close()
    finally:
        d.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
