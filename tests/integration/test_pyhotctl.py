"""pyhotctl against a live pyhotd: every command, exit codes, --json, PYHOT_SOCKET."""

import json
import os
import signal
import subprocess

import pytest

from conftest import PYHOTCTL, TIMEOUT, clean_env, read_lines_until, wait_for

# These tests count how often a module's top level runs (a reload each): whole-module
# reloads. test_reload_definitions.py covers the default, definition-level mode.
pytestmark = pytest.mark.reload_mode("module")


def test_ping_status_modules(pyhotd, pyhotctl):
    d = pyhotd({"mymod.py": "X = 1\n"})
    r = pyhotctl("ping", socket=d.socket)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("pong") and str(d.proc.pid) in r.stdout, r.stdout

    r = pyhotctl("status", socket=d.socket)
    assert r.returncode == 0, r.stderr
    assert d.socket in r.stdout and d.root in r.stdout and "watching" in r.stdout, r.stdout
    assert str(d.proc.pid) in r.stdout

    r = pyhotctl("modules", "my*", socket=d.socket)
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()]
    assert ["mymod", d.path("mymod.py")] in rows, r.stdout
    assert all(row[0] in ("NAME", "mymod") for row in rows), r.stdout
    r = pyhotctl("modules", socket=d.socket)
    assert r.returncode == 0 and "\nsys " in r.stdout, r.stdout


def test_json_output(pyhotd, pyhotctl):
    d = pyhotd({"m.py": "X = 1\n"})
    for args in (["ping"], ["status"], ["modules", "m"], ["exec", "6 * 7"], ["reload", "m"]):
        r = pyhotctl("--json", *args, socket=d.socket)
        assert r.returncode == 0, (args, r.stderr)
        lines = r.stdout.splitlines()
        assert len(lines) == 1, (args, r.stdout)
        reply = json.loads(lines[0])
        assert reply["ok"] is True, reply
    assert json.loads(pyhotctl("--json", "status", socket=d.socket).stdout)["result"]["pid"] == d.proc.pid
    assert json.loads(pyhotctl("--json", "exec", "6 * 7", socket=d.socket).stdout)["result"]["value"] == "42"
    # --json after the command works too; an error response is printed as JSON as well.
    r = pyhotctl("--json", "exec", "1/0", socket=d.socket)
    assert r.returncode == 1
    reply = json.loads(r.stdout)
    assert reply["ok"] is False and reply["error"]["type"] == "ZeroDivisionError", reply
    r = pyhotctl("status", "--json", socket=d.socket)
    assert r.returncode == 0 and json.loads(r.stdout)["ok"] is True


def test_exec(pyhotd, pyhotctl):
    d = pyhotd({"m.py": "VALUE = 7\n"})
    r = pyhotctl("exec", "import m; print('out'); m.VALUE * 6", socket=d.socket)
    # Statements: no value line, only the output.
    assert (r.returncode, r.stdout) == (0, "out\n"), r
    r = pyhotctl("exec", "__import__('m').VALUE * 6", socket=d.socket)
    assert (r.returncode, r.stdout) == (0, "42\n"), r
    r = pyhotctl("exec", "-", socket=d.socket,
                 input="import sys\nprint('from stdin')\nprint('e', file=sys.stderr)\n")
    assert (r.returncode, r.stdout, r.stderr) == (0, "from stdin\n", "e\n"), r
    r = pyhotctl("exec", "-", socket=d.socket, input="'expr from stdin'")
    assert r.returncode == 0 and r.stdout == "'expr from stdin'\n", r
    r = pyhotctl("exec", "--", "-1 + 3", socket=d.socket)
    assert r.returncode == 0 and r.stdout == "2\n", r

    r = pyhotctl("exec", "print('partial')\nraise ValueError('from ctl')", socket=d.socket)
    assert r.returncode == 1, r
    assert r.stdout == "partial\n"
    assert "ValueError: from ctl" in r.stderr and "Traceback" in r.stderr, r.stderr
    r = pyhotctl("exec", "raise SystemExit(0)", socket=d.socket)
    assert r.returncode == 1 and "SystemExit" in r.stderr, r
    assert d.alive()


def test_reload(pyhotd, pyhotctl):
    counting = "try:\n    LOADS += 1\nexcept NameError:\n    LOADS = 1\n"
    d = pyhotd({"m.py": counting, "broken.py": "X = 1\n"})
    r = pyhotctl("reload", "m", socket=d.socket)
    assert r.returncode == 0, r
    assert "reload m ok" in r.stdout and "batch" in r.stdout, r.stdout
    assert d.module_value("m", "LOADS") == 2
    # A relative path to an existing file is resolved by pyhotctl.
    r = subprocess.run([PYHOTCTL, "--socket", d.socket, "reload", "m.py"], capture_output=True,
                       text=True, cwd=d.root, env=clean_env(), timeout=TIMEOUT)
    assert r.returncode == 0, r
    assert d.module_value("m", "LOADS") == 3

    sub = d.subscriber()
    d.write("broken.py", "X = 2\nraise RuntimeError('top level')\n")
    sub.wait_batch(d.path("broken.py"))
    r = pyhotctl("reload", "broken", socket=d.socket)
    assert r.returncode == 1, r
    assert "rolled_back" in r.stdout or "rolled back" in r.stdout, r.stdout
    assert "top level" in r.stderr, r.stderr
    assert d.module_value("broken", "X") == 1

    r = pyhotctl("reload", "no_such_module", socket=d.socket)
    assert r.returncode == 1 and "no_such_module" in r.stderr, r
    r = pyhotctl("reload", socket=d.socket)
    assert r.returncode == 2, r


def _start_tail(d, *extra):
    proc = subprocess.Popen([PYHOTCTL, "--socket", d.socket] + list(extra) + ["tail"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
    # Subscribed once the daemon counts it.
    wait_for(lambda: d.status()["subscribers"] >= 1 or proc.poll() is not None,
             what="pyhotctl tail to subscribe")
    assert proc.poll() is None, proc.stderr.read()
    return proc


def test_tail(pyhotd):
    d = pyhotd({"m.py": "VALUE = 1\n"})
    text = _start_tail(d)
    raw = _start_tail(d, "--json")
    try:
        wait_for(lambda: d.status()["subscribers"] == 2, what="both tails to subscribe")
        d.write("m.py", "VALUE = 2\n")
        lines = read_lines_until(text, lambda l: " batch " in l)
        assert any("reload m ok" in l for l in lines), lines
        events = [json.loads(l) for l in read_lines_until(raw, lambda l: '"batch"' in l
                                                           and json.loads(l)["event"] == "batch")]
        assert [e["event"] for e in events] == ["reload", "batch"], events
        assert events[0]["module"] == "m" and events[0]["result"] == "ok"

        # Ctrl-C ends tail with status 0.
        text.send_signal(signal.SIGINT)
        assert text.wait(TIMEOUT) == 0
        # The daemon stopping ends it with status 0 too, after the stopping line.
        d.shutdown()
        out, _ = raw.communicate(timeout=TIMEOUT)
        assert raw.returncode == 0
        assert json.loads(out.decode().splitlines()[-1])["event"] == "stopping"
    finally:
        for p in (text, raw):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_tail_prints_replaced_names_with_their_reasons_and_removed_names(pyhotd):
    src = "import enum\nclass Color(enum.Enum):\n    RED = 1\n{extra}def gone():\n    return 1\n"
    d = pyhotd({"m.py": src.format(extra="")}, mode="definitions")
    text = _start_tail(d)
    try:
        d.write("m.py", "import enum\nclass Color(enum.Enum):\n    RED = 1\n    BLUE = 2\n")
        lines = read_lines_until(text, lambda l: " batch " in l)
        line = next(l for l in lines if "reload m ok" in l)
        assert "replaced [m.Color (enum)]" in line and "removed [m.gone]" in line, line
    finally:
        text.kill()
        text.wait()


def test_stop(pyhotd, pyhotctl):
    d = pyhotd({"m.py": "X = 1\n"})
    r = pyhotctl("stop", socket=d.socket)
    assert r.returncode == 0 and "stopping" in r.stdout, r
    assert d.wait_exit() == 0
    assert not os.path.exists(d.socket)


def test_pyhot_socket_environment(pyhotd, pyhotctl):
    d = pyhotd({"m.py": "X = 1\n"})
    r = pyhotctl("ping", env={"PYHOT_SOCKET": d.socket})
    assert r.returncode == 0 and str(d.proc.pid) in r.stdout, r
    # --socket wins over the environment.
    r = pyhotctl("ping", socket=d.socket, env={"PYHOT_SOCKET": "/nonexistent/x.sock"})
    assert r.returncode == 0, r


def test_no_daemon_and_usage_errors(pyhotctl, short_tmp):
    missing = os.path.join(short_tmp, "nobody.sock")
    r = pyhotctl("ping", socket=missing)
    assert r.returncode == 2 and missing in r.stderr, r
    r = pyhotctl("status", env={"PYHOT_SOCKET": missing})
    assert r.returncode == 2 and missing in r.stderr, r
    # A socket file nobody listens on.
    import socket as socketmod
    s = socketmod.socket(socketmod.AF_UNIX)
    s.bind(missing)
    s.close()
    r = pyhotctl("ping", socket=missing)
    assert r.returncode == 2 and missing in r.stderr, r

    r = pyhotctl("frobnicate", socket=missing)
    assert r.returncode == 2 and "frobnicate" in r.stderr, r
    r = pyhotctl(socket=missing)
    assert r.returncode == 2
    r = pyhotctl("--bogus-option", "ping", socket=missing)
    assert r.returncode == 2
    r = pyhotctl("exec", socket=missing)
    assert r.returncode == 2
    r = pyhotctl("--help")
    assert r.returncode == 0 and "tail" in r.stdout
