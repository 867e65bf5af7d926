"""Metrics (docs/protocol.md, "metrics"): the Prometheus text exposition of the real
daemon, through the control socket and pyhotctl, checked by promtool."""

import re
import shutil
import subprocess
import time

import pytest

from conftest import write

FAMILIES = {
    "pyhot_reloads_total": "counter", "pyhot_batches_total": "counter",
    "pyhot_runs_total": "counter", "pyhot_plugin_loads_total": "counter",
    "pyhot_rescans_total": "counter",
    "pyhot_batch_latency_seconds": "histogram", "pyhot_reload_duration_seconds": "histogram",
    "pyhot_run_duration_seconds": "histogram",
    "pyhot_watched_directories": "gauge", "pyhot_loaded_modules": "gauge",
    "pyhot_clients": "gauge", "pyhot_subscribers": "gauge", "pyhot_pending_files": "gauge",
    "pyhot_resident_memory_bytes": "gauge", "pyhot_start_time_seconds": "gauge",
    "pyhot_prefork_runs_total": "counter", "pyhot_prefork_retired_total": "counter",
    "pyhot_prefork_ready": "gauge",
}


def samples(text):
    """{'name{labels}': value} of every sample line."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def test_every_family_present_and_promtool_clean(pyhotd, pyhotctl, tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not installed: `make deps` installs the Debian package prometheus")
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    write(str(plugins / "plugin_a.py"), "A = 1\n")
    d = pyhotd({"m.py": "X = 1\n"}, args=["--plugins", str(plugins)])
    c = d.subscriber()
    d.write("m.py", "X = 2\n")
    c.wait_batch(d.path("m.py"))
    write(str(plugins / "plugin_a.py"), "A = 2\n")
    c.next_event(lambda e: e["event"] == "plugin" and e["result"] == "reloaded")
    script = write(str(tmp_path / "s.py"), "import sys\nsys.exit(4)\n")
    for args in (["run", script], ["run", "--isolate", script]):
        assert pyhotctl(*args, socket=d.socket).returncode == 4

    out = pyhotctl("metrics", socket=d.socket)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout + check.stderr == ""    # not even a lint warning

    for name, kind in FAMILIES.items():
        assert "\n# TYPE %s %s\n" % (name, kind) in text, name
        assert re.search(r"^# HELP %s \S" % name, text, re.M), name
    values = samples(text)
    assert values['pyhot_reloads_total{result="ok"}'] >= 1
    assert values['pyhot_batches_total{result="ok"}'] >= 1
    assert values['pyhot_runs_total{result="error"}'] == 2
    assert values['pyhot_runs_total{result="ok"}'] == 0
    assert values['pyhot_plugin_loads_total{result="loaded"}'] == 1
    assert values['pyhot_plugin_loads_total{result="reloaded"}'] == 1
    assert values['pyhot_rescans_total'] == 0
    assert values['pyhot_run_duration_seconds_count'] == 2
    assert values['pyhot_run_duration_seconds_bucket{le="+Inf"}'] == 2
    assert values['pyhot_run_duration_seconds_sum'] > 0
    assert values['pyhot_batch_latency_seconds_count'] >= 1
    assert values['pyhot_reload_duration_seconds_count'] >= 1
    status = d.status()
    assert values['pyhot_watched_directories'] == status["watched_dirs"] == 2
    assert values['pyhot_loaded_modules'] > 10
    assert values['pyhot_clients'] >= 2            # the subscriber and this request
    assert values['pyhot_subscribers'] == 1
    assert values['pyhot_pending_files'] == 0
    with open("/proc/%d/status" % d.proc.pid) as f:
        rss = int(re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024
    assert 0.5 * rss < values['pyhot_resident_memory_bytes'] < 2 * rss
    started = time.time() - status["uptime_ms"] / 1000.0
    assert abs(values['pyhot_start_time_seconds'] - started) < 5


def test_the_command_returns_the_same_text(pyhotd, pyhotctl):
    d = pyhotd()
    result = d.conn.call("metrics")
    assert result["content_type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert result["text"].startswith("# HELP pyhot_reloads_total ")
    as_json = pyhotctl("--json", "metrics", socket=d.socket)
    import json
    assert json.loads(as_json.stdout)["result"]["content_type"] == result["content_type"]
    # The same families, in the same order, as pyhotctl prints them.
    printed = pyhotctl("metrics", socket=d.socket).stdout
    assert [l for l in printed.splitlines() if l.startswith("#")] == \
        [l for l in result["text"].splitlines() if l.startswith("#")]
