"""Shared by the benchmarks: what every bench prints about the machine, and percentiles.

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


def percentile(values, p):
    """The p-th percentile (0..100) of values, interpolated linearly; NaN when empty."""
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)
