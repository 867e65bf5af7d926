"""Shared by the watcher benchmarks: the generated tree, starting pyhotd, reading /proc.

Standard library only. Binaries come from $PYHOT_BIN (default: <repo>/build/bin).
"""

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time

from benchlib import cpu_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("PYHOT_BIN") or os.path.join(REPO, "build", "bin")
PYHOTD = os.path.join(BIN, "pyhotd")
DEFAULT_TREE = "/tmp/pyhot-bench-tree"


def machine():
    cpu = cpu_model()
    load = os.getloadavg()[0]
    return ("%s, %d cores, kernel %s %s, Python %s, load average %.2f at start"
            % (cpu, os.cpu_count(), platform.release(), platform.machine(),
               platform.python_version(), load))


def tree_shape(dirs, files):
    """The directories of a tree of `dirs` directories (the root not counted), fan-out 22,
    breadth first, and `files` files spread evenly over them."""
    names = []
    level = [""]
    while len(names) < dirs:
        nxt = []
        for parent in level:
            for i in range(22):
                if len(names) == dirs:
                    break
                rel = os.path.join(parent, "d%02d" % i) if parent else "d%02d" % i
                names.append(rel)
                nxt.append(rel)
        level = nxt
    return names


def make_tree(root, dirs=10000, files=100000, ext=".py"):
    """Generates the tree once (a stamp file says which shape it has); returns root."""
    stamp = os.path.join(root, ".bench-tree-%d-%d%s" % (dirs, files, ext))
    if os.path.exists(stamp):
        return root
    if os.path.exists(root):
        shutil.rmtree(root)
    os.makedirs(root)
    names = tree_shape(dirs, files)
    for rel in names:
        os.mkdir(os.path.join(root, rel))
    per_dir, extra = divmod(files, len(names))
    k = 0
    for n, rel in enumerate(names):
        for i in range(per_dir + (1 if n < extra else 0)):
            with open(os.path.join(root, rel, "f%05d%s" % (k, ext)), "w") as f:
                f.write("X = %d\n" % k)
            k += 1
    open(stamp, "w").close()
    return root


def count_dirs(root):
    n = 0
    for _, dirnames, _ in os.walk(root):
        n += len(dirnames)
    return n + 1


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_ticks(pid):
    """utime + stime of the whole process, in clock ticks."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def wakeups(pid):
    """Context switches (voluntary + involuntary) summed over the process's threads."""
    total = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


class Pyhotd:
    """A pyhotd process with a client connection."""

    def __init__(self, args, workdir, name="pyhotd"):
        self.sock_path = os.path.join(workdir, name + ".sock")
        self.log_path = os.path.join(workdir, name + ".log")
        self.argv = [PYHOTD, "--socket", self.sock_path] + list(args)
        self.log = open(self.log_path, "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        self.sock = None
        self.buf = b""
        self.next_id = 0
        self.events = []

    def connect(self, timeout=120):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise SystemExit("pyhotd exited with %s; log %s" % (self.proc.returncode, self.log_path))
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(self.sock_path)
                self.sock = s
                return time.monotonic()
            except OSError:
                s.close()
                if time.monotonic() > deadline:
                    raise SystemExit("pyhotd did not answer within %d s" % timeout)
                time.sleep(0.001)

    def _line(self, timeout=600):
        self.sock.settimeout(timeout)
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise SystemExit("pyhotd closed the connection")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def call(self, cmd, **args):
        self.next_id += 1
        msg = dict(id=self.next_id, cmd=cmd, **args)
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            m = self._line()
            if "event" in m and "ok" not in m:
                self.events.append(m)
                continue
            if not m.get("ok"):
                raise SystemExit("%s failed: %r" % (cmd, m))
            return m["result"]

    def next_event(self, timeout=600):
        if self.events:
            return self.events.pop(0)
        return self._line(timeout)

    def wait_ready(self, timeout=600):
        deadline = time.monotonic() + timeout
        while True:
            st = self.call("status")
            if st["ready"]:
                return st
            if time.monotonic() > deadline:
                raise SystemExit("pyhotd not ready within %d s" % timeout)
            time.sleep(0.005)

    def stop(self):
        try:
            if self.sock:
                self.call("shutdown")
        except (SystemExit, OSError):
            pass
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.sock:
            self.sock.close()
        self.log.close()


def command_line():
    return " ".join([os.path.relpath(sys.executable) if False else "/usr/bin/python3"] +
                    [os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])
