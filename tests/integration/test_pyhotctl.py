"""pyhotctl against a live pyhotd: every verb, exit codes, human and --json output,
colours on a terminal only, PYHOT_SOCKET, tail with history and filters, --help of every
verb, and that the man page and the bash completion cover every verb."""

import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess

import pytest

from conftest import PYHOTCTL, REPO, TIMEOUT, clean_env, read_lines_until, wait_for

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
    # A final expression statement's value is shown after the output, as in the REPL.
    r = pyhotctl("exec", "import m; print('out'); m.VALUE * 6", socket=d.socket)
    assert (r.returncode, r.stdout) == (0, "out\n42\n"), r
    # Statements only: no value line, only the output.
    r = pyhotctl("exec", "import m; print('out'); y = m.VALUE", socket=d.socket)
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

ANSI = re.compile(r"\x1b\[[0-9;]*m")
COMMANDS = ["hello", "ping", "status", "stats", "modules", "reload", "watch", "unwatch",
            "pause", "resume", "tail", "history", "exec", "stop"]
COUNTING = "try:\n    LOADS += 1\nexcept NameError:\n    LOADS = 1\nVALUE = {value}\n"


def _on_a_terminal(argv, env=None):
    """Runs argv with stdout on a pseudo-terminal; returns (exit status, output)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=subprocess.PIPE, env=clean_env(**(env or {})))
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], TIMEOUT)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:       # EIO: the other side is closed
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return proc.wait(TIMEOUT), out.decode()


def test_hello(pyhotd, pyhotctl):
    d = pyhotd({"m.py": "X = 1\n"})
    r = pyhotctl("hello", socket=d.socket)
    assert r.returncode == 0, r.stderr
    fields = dict(re.split(r":\s+", line, 1) for line in r.stdout.splitlines())
    assert fields["protocol"] == "1" and fields["pid"] == str(d.proc.pid)
    assert "watch" in fields["commands"].split(", ")
    r = pyhotctl("--json", "hello", socket=d.socket)
    assert json.loads(r.stdout)["result"]["protocol"] == 1


def test_stats_draws_histograms(pyhotd, pyhotctl):
    d = pyhotd({"m.py": COUNTING.format(value=1)})
    r = pyhotctl("stats", socket=d.socket, env={"LC_ALL": "C.UTF-8"})
    assert r.returncode == 0, r.stderr
    assert "reload duration: no module reloads yet" in r.stdout, r.stdout
    sub = d.subscriber()
    for value in range(2, 6):
        sub.wait_batch(d.write("m.py", COUNTING.format(value=value)))
    r = pyhotctl("stats", socket=d.socket, env={"LC_ALL": "C.UTF-8"})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert ANSI.search(out) is None                        # not a terminal: no colours
    assert re.search(r"reloads:\s+4 ok, 0 error, 0 rolled back, 0 skipped", out), out
    assert re.search(r"save -> reloaded latency: 4 batches of file changes, min [0-9.]+, "
                     r"p50 [0-9.]+, p90 [0-9.]+, p99 [0-9.]+, max [0-9.]+ ms", out), out
    bars = [line for line in out.splitlines() if re.match(r"\s+[0-9.e+-]+ - [0-9.e+-]+\s+ms  ", line)]
    assert bars, out
    assert any("\u2588" in line for line in bars), out     # block characters in UTF-8
    counts = [int(line.rsplit(None, 1)[1]) for line in bars]
    assert sum(counts) == 8, out                           # 4 reloads + 4 batches
    # In the C locale, bars are '#'.
    r = pyhotctl("stats", socket=d.socket, env={"LC_ALL": "C", "LANG": None})
    assert "\u2588" not in r.stdout and re.search(r"ms  #+ \d", r.stdout), r.stdout
    raw = json.loads(pyhotctl("--json", "stats", socket=d.socket).stdout)
    assert raw["result"]["latency_ms"]["count"] == 4


def test_colours_only_on_a_terminal_and_without_no_color(pyhotd):
    d = pyhotd({"m.py": COUNTING.format(value=1)})
    d.conn.call("reload", targets=["m"])
    argv = [PYHOTCTL, "--socket", d.socket, "history"]
    code, out = _on_a_terminal(argv)
    assert code == 0 and "\x1b[32mok\x1b[0m" in out, repr(out)
    code, out = _on_a_terminal(argv, env={"NO_COLOR": "1"})
    assert code == 0 and ANSI.search(out) is None and " ok " in out, repr(out)
    code, out = _on_a_terminal([PYHOTCTL, "--socket", d.socket, "stats"])
    assert code == 0 and "\x1b[36m" in out, repr(out)      # coloured bars


def test_history(pyhotd, pyhotctl):
    d = pyhotd({"a.py": COUNTING.format(value=1), "b.py": COUNTING.format(value=1)})
    for target in ("a", "b"):
        d.conn.call("reload", targets=[target])
    r = pyhotctl("history", socket=d.socket)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 5 and " started pyhotd " in lines[0], lines
    assert re.search(r" reload a ok [0-9.]+ ms \(batch 1\)$", lines[1]), lines
    assert re.search(r" batch 2 ok \[b\] ", lines[4]), lines
    r = pyhotctl("history", "2", socket=d.socket)
    assert r.stdout.splitlines() == lines[-2:]
    assert pyhotctl("history", "-n", "2", socket=d.socket).stdout == r.stdout
    r = pyhotctl("history", "-e", "batch", "-m", "b*", socket=d.socket)
    assert r.stdout.splitlines() == [lines[4]], r.stdout
    r = pyhotctl("history", "--module", "a", "--event", "reload", socket=d.socket)
    assert r.stdout.splitlines() == [lines[1]], r.stdout
    r = pyhotctl("--json", "history", "1", socket=d.socket)
    assert [e["seq"] for e in json.loads(r.stdout)["result"]["events"]] == [5]
    for bad in (["history", "x"], ["history", "-1"], ["history", "-n"], ["ping", "-e", "batch"],
                ["status", "-n", "3"]):
        r = pyhotctl(*bad, socket=d.socket)
        assert r.returncode == 2, (bad, r)
    r = pyhotctl("history", "-e", "Bad Type", socket=d.socket)
    assert r.returncode == 1 and "bad_argument" in r.stderr, r


def test_tail_shows_history_then_follows_with_filters(pyhotd):
    d = pyhotd({"app/__init__.py": "", "app/views.py": COUNTING.format(value=1),
                "other.py": COUNTING.format(value=1)})
    d.conn.call("reload", targets=["other"])
    d.conn.call("reload", targets=["app.views"])
    proc = subprocess.Popen([PYHOTCTL, "--socket", d.socket, "tail", "-n", "3", "-m", "app.*"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
    try:
        # The last 3 events that pass the filter: started (names no module), then app's.
        lines = read_lines_until(proc, lambda l: " batch 2 " in l)
        assert len(lines) == 3, lines
        assert " started pyhotd " in lines[0] and " reload app.views ok " in lines[1], lines
        wait_for(lambda: d.status()["subscribers"] == 1, what="tail to subscribe")
        d.write("other.py", COUNTING.format(value=2))
        d.write("app/views.py", COUNTING.format(value=2))
        lines = read_lines_until(proc, lambda l: " batch " in l)
        # other's reload line is filtered out (the batch, holding app.views, is not).
        assert all(" reload other " not in l for l in lines), lines
        assert lines[0].split()[1:4] == ["reload", "app.views", "ok"], lines
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_watch_and_unwatch(pyhotd, pyhotctl, tmp_path):
    d = pyhotd({"m.py": "X = 1\n"})
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "plug.py").write_text("VALUE = 1\n")
    (extra / "bad.py").write_text("raise ImportError('nope')\n")
    r = subprocess.run([PYHOTCTL, "--socket", d.socket, "watch", "extra"], cwd=str(tmp_path),
                       capture_output=True, text=True, env=clean_env(), timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    real = os.path.realpath(str(extra))
    assert r.stdout == "watching %s (1 module imported, 2 directories watched in all)\n" % real
    assert "import of bad failed: ImportError: nope" in r.stderr, r.stderr
    assert d.eval("__import__('plug').VALUE") == 1
    r = pyhotctl("watch", real, socket=d.socket)
    assert r.returncode == 1 and "already_watched" in r.stderr, r
    r = pyhotctl("--json", "unwatch", real, socket=d.socket)
    assert r.returncode == 0 and json.loads(r.stdout)["result"]["path"] == real
    r = pyhotctl("unwatch", real, socket=d.socket)
    assert r.returncode == 1 and "not_found" in r.stderr, r
    r = pyhotctl("watch", str(tmp_path / "nope"), socket=d.socket)
    assert r.returncode == 1 and "not_found" in r.stderr, r
    r = pyhotctl("watch", socket=d.socket)
    assert r.returncode == 2


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(pyhotctl, command):
    for argv in ([command, "--help"], ["help", command]):
        r = pyhotctl(*argv)
        assert r.returncode == 0, r
        assert r.stdout.startswith("Usage: pyhotctl [OPTIONS] %s" % command), r.stdout
    assert command in pyhotctl("--help").stdout


def test_man_page_and_completion_cover_every_command():
    with open(os.path.join(REPO, "docs", "pyhotctl.1")) as f:
        man = f.read()
    with open(os.path.join(REPO, "completion", "pyhotctl.bash")) as f:
        completion = f.read()
    listed = re.search(r'_pyhotctl_commands="([^"]*)"', completion).group(1).split()
    for command in COMMANDS:
        assert re.search(r"^\.(TP\n\.B|TP\n\.BI|TP\n\.BR) \"?%s\b" % command, man, re.M) \
            or re.search(r"^\.B[IR]? \"?%s\b" % command, man, re.M), command
        assert command in listed, command
    for option in ("--socket", "--json", "--timeout", "--lines", "--event", "--module"):
        assert option.replace("-", "\\-") in man and option in completion, option


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completion(pyhotd, tmp_path):
    d = pyhotd({"mymod.py": "X = 1\n"})
    script = r"""
source %s
complete_line() {
    COMP_WORDS=($1); COMP_CWORD=$2; COMPREPLY=()
    _pyhotctl
    echo "${COMPREPLY[*]}"
}
complete_line "pyhotctl ta" 1
complete_line "pyhotctl --socket %s reload mym" 4
complete_line "pyhotctl tail --ev" 2
complete_line "pyhotctl tail -e ba" 3
complete_line "pyhotctl help st" 2
""" % (os.path.join(REPO, "completion", "pyhotctl.bash"), d.socket)
    env = clean_env(PATH=os.path.dirname(PYHOTCTL) + os.pathsep + os.environ["PATH"])
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env,
                       timeout=TIMEOUT, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["tail", "mymod", "--event", "batch", "status stats stop"], r.stdout
