"""Shared by the benchmarks: what every bench prints about the machine, percentiles,
hyperfine, a daemon for the run benches and waiting for it.

Standard library only; the benches import it from their own directory.
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types


def import_all_config(directory, mode=None):
    """Writes directory/pyhotd.conf: every module imported at start ([watch] import = all),
    and with mode ("module" or "definitions") that [reload] mode, else pyhotd's default.
    Returns the file's path, for --config."""
    path = os.path.join(directory, "pyhotd.conf")
    with open(path, "w") as f:
        f.write("[watch]\nimport = all\n")
        if mode is not None:
            f.write("[reload]\nmode = %s\n" % mode)
    return path


def whole_module_config(directory):
    """import_all_config(directory, "module"), for benches whose modules count their
    top-level runs: each reload runs the whole module, as the benches measured before
    definition-level reload became the default."""
    return import_all_config(directory, "module")


def cpu_model(default="?"):
    """The CPU's model name from /proc/cpuinfo, or default."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default


def cpu_ticks():
    """(steal, total) clock ticks of all CPUs so far (/proc/stat, proc(5)): on a virtual
    machine, steal is the time the host gave this machine's CPUs to others."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return fields[7] if len(fields) > 7 else 0, sum(fields[:8])


def steal_share(before, after):
    """The share of CPU time stolen by the host between two cpu_ticks() readings (0..1)."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


def hyperfine(commands, runs, tmp):
    """(mean, median, stddev) in seconds of each command (a string, split at spaces), timed
    by `hyperfine --warmup 3 -N --runs RUNS`, one command after the other; its own output
    goes to stderr and its JSON export to tmp/hf.json."""
    out = os.path.join(tmp, "hf.json")
    subprocess.run(["hyperfine", "--warmup", "3", "-N", "--runs", str(runs), "--export-json", out,
                    "--style", "basic"] + commands, check=True, stdout=sys.stderr)
    with open(out) as f:
        return [(r["mean"], r["median"], r["stddev"]) for r in json.load(f)["results"]]


def wait_serving(argv, timeout=10.0):
    """Runs argv (a pyhotctl request) every 50 ms until it succeeds: True, or False after
    timeout seconds (pyhotd did not start)."""
    deadline = time.monotonic() + timeout
    while subprocess.run(argv, capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@contextlib.contextmanager
def run_daemon(bin_dir, prefix, scripts, config="", ready=("ping",)):
    """A pyhotd for the run benches: a temporary directory under /tmp, readable by all (a
    root daemon's sandboxed runs are nobody), holding scripts ({name: text}) and the
    configuration (the socket in a 0700 directory of its own, which pyhotd requires, then
    config's text). Waits until `pyhotctl READY...` succeeds. Yields a namespace with tmp,
    sock, ctl (pyhotctl's path) and path(name); stops the daemon and removes the directory
    on the way out. Raises RuntimeError when pyhotd does not start."""
    tmp = tempfile.mkdtemp(prefix=prefix)
    os.chmod(tmp, 0o755)
    sockdir = os.path.join(tmp, "s")
    os.mkdir(sockdir, 0o700)
    sock = os.path.join(sockdir, "pyhotd.sock")
    for name, text in scripts.items():
        with open(os.path.join(tmp, name), "w") as f:
            f.write(text)
    conf = os.path.join(tmp, "pyhotd.conf")
    with open(conf, "w") as f:
        f.write("[daemon]\nsocket = %s\nlog_level = warn\n%s" % (sock, config))
    ctl = os.path.join(bin_dir, "pyhotctl")
    with open(os.path.join(tmp, "pyhotd.log"), "w") as log:
        daemon = subprocess.Popen([os.path.join(bin_dir, "pyhotd"), "--config", conf], stderr=log)
    try:
        if not wait_serving([ctl, "--socket", sock] + list(ready)):
            raise RuntimeError("pyhotd did not start (its log: %s)" % os.path.join(tmp, "pyhotd.log"))
        yield types.SimpleNamespace(tmp=tmp, sock=sock, ctl=ctl,
                                    path=lambda name: os.path.join(tmp, name))
    finally:
        subprocess.run([ctl, "--socket", sock, "stop"], capture_output=True)
        daemon.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def percentile(values, p):
    """The p-th percentile (0..100) of values, interpolated linearly; NaN when empty."""
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)
