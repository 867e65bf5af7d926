"""Shared by the benchmarks: what every bench prints about the machine, percentiles,
hyperfine, and waiting for the daemon.

Standard library only; the benches import it from their own directory.
"""


def import_all_config(directory, mode=None):
    """Writes directory/pyhotd.conf: every module imported at start ([watch] import = all),
    and with mode ("module" or "definitions") that [reload] mode, else pyhotd's default.
    Returns the file's path, for --config."""
    import os
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
    import json
    import os
    import subprocess
    import sys
    out = os.path.join(tmp, "hf.json")
    subprocess.run(["hyperfine", "--warmup", "3", "-N", "--runs", str(runs), "--export-json", out,
                    "--style", "basic"] + commands, check=True, stdout=sys.stderr)
    with open(out) as f:
        return [(r["mean"], r["median"], r["stddev"]) for r in json.load(f)["results"]]


def wait_serving(argv, timeout=10.0):
    """Runs argv (a pyhotctl request) every 50 ms until it succeeds: True, or False after
    timeout seconds (pyhotd did not start)."""
    import subprocess
    import time
    deadline = time.monotonic() + timeout
    while subprocess.run(argv, capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def percentile(values, p):
    """The p-th percentile (0..100) of values, interpolated linearly; NaN when empty."""
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)
