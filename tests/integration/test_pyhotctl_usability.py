"""What a newcomer meets first in the command-line tools: help that fits 80 columns,
`pyhotctl run -` reading the script from stdin as `python3 -` does, one clear error for a
missing script, tail saying what it follows, the two timeouts kept apart, and Ctrl-C in
the repl interrupting the running statement and returning to the prompt."""

import contextlib
import os
import pty
import re
import select
import signal
import subprocess
import time

from conftest import (PYHOTCTL, PYHOTD, SCALE, TIMEOUT, clean_env, leave_console, reap, run,
                      wait_for, write)


def _commands():
    r = run([PYHOTCTL, "--help"])
    assert r.returncode == 0, r.stderr
    section = r.stdout.split("Commands:\n", 1)[1].split("\n\n", 1)[0]
    names = [line.split()[0] for line in section.splitlines() if line.startswith("  ")
             and not line.startswith("   ")]
    assert "run" in names and "repl" in names and "tail" in names, section
    return names


def test_every_help_fits_80_columns():
    texts = {"pyhotctl --help": run([PYHOTCTL, "--help"]).stdout,
             "pyhotd --help": run([PYHOTD, "--help"]).stdout}
    for name in _commands():
        r = run([PYHOTCTL, name, "--help"])
        assert r.returncode == 0, (name, r.stderr)
        texts["pyhotctl %s --help" % name] = r.stdout
    for what, text in texts.items():
        assert text.strip(), what
        for line in text.splitlines():
            assert len(line) <= 80, "%s: a line of %d columns:\n%s" % (what, len(line), line)
    # The overview keeps what each synopsis says: run takes a script, "-" or -m MODULE.
    assert "SCRIPT|-|-m MODULE" in texts["pyhotctl run --help"]


def test_run_reads_the_script_from_stdin_as_python3_does(pyhotd, pyhotctl):
    d = pyhotd({"m.py": "VALUE = 7\n"})
    r = pyhotctl("run", "-", socket=d.socket, input="print(6*7)\n")
    assert (r.returncode, r.stdout, r.stderr) == (0, "42\n", ""), r
    script = ("import sys, m\nprint(sys.argv, __file__, __name__, m.VALUE)\n"
              "raise SystemExit(3)\n")
    r = pyhotctl("run", "-", "a", "b", socket=d.socket, input=script)
    assert (r.returncode, r.stdout) == (3, "['-', 'a', 'b'] <stdin> __main__ 7\n"), r
    # As python3 - prints it.
    expected = subprocess.run(["/usr/bin/python3", "-", "a", "b"], input=script.replace(
        ", m.VALUE", ", 7").replace("import sys, m", "import sys"), capture_output=True,
        text=True)
    assert (expected.returncode, expected.stdout) == (r.returncode, r.stdout)
    r = pyhotctl("run", "--isolate", "-", "x", socket=d.socket,
                 input="import sys\nprint(sys.argv, __file__)\n1/0\n")
    assert r.returncode == 1 and r.stdout == "['-', 'x'] <stdin>\n", r
    assert 'File "<stdin>", line 3' in r.stderr and "ZeroDivisionError" in r.stderr, r.stderr


def test_run_of_a_missing_script_says_so_once(pyhotd, pyhotctl, tmp_path):
    d = pyhotd({"m.py": "X = 1\n"})
    missing = str(tmp_path / "nothere.py")
    r = pyhotctl("run", missing, socket=d.socket)
    ours = r.stderr.strip().splitlines()
    assert len(ours) == 1 and "can't open file" in ours[0] and missing in ours[0], r.stderr
    # python3 exits 2 for a script it cannot open.
    assert r.returncode == subprocess.run(["/usr/bin/python3", missing],
                                          capture_output=True).returncode == 2


def test_global_timeout_and_run_timeout_are_apart(pyhotd, pyhotctl, tmp_path):
    """The global --timeout bounds the wait for a response; a run's response is its end,
    which only run --timeout limits (docs/pyhotctl.1)."""
    d = pyhotd({"m.py": "X = 1\n"})
    script = write(tmp_path / "slow.py", "import time\ntime.sleep(2)\nprint('done')\n")
    r = pyhotctl("--timeout", "1", "run", script, socket=d.socket)
    assert (r.returncode, r.stdout) == (0, "done\n"), r
    r = pyhotctl("run", "--timeout", "1", script, socket=d.socket)
    assert r.returncode == 124 and r.stdout == "", r
    for text in (run([PYHOTCTL, "--help"]).stdout, run([PYHOTCTL, "run", "--help"]).stdout):
        assert "run --timeout" in text, text


def _spawn_on_a_pty(argv, env=None):
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(argv[0], argv, env or clean_env())
    return pid, fd


class _Screen:
    """What a program on a pty wrote so far."""

    def __init__(self, fd):
        self.fd = fd
        self.out = b""

    def read_until(self, token, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while token not in self.out:
            left = deadline - time.monotonic()
            assert left > 0, "no %r in %r" % (token, self.out)
            if select.select([self.fd], [], [], left)[0]:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                self.out += chunk
        return self.out


def test_tail_on_a_terminal_says_what_it_follows(pyhotd):
    d = pyhotd({"m.py": "X = 1\n"})
    pid, fd = _spawn_on_a_pty([PYHOTCTL, "--socket", d.socket, "tail", "-e", "batch",
                               "-m", "m*"])
    screen = _Screen(fd)
    try:
        text = screen.read_until(b"\r\n").decode()
        first = re.sub(r"\x1b\[[0-9;]*m", "", text.splitlines()[0])
        assert "following" in first and d.socket in first, first
        assert "batch" in first and "m*" in first and "Ctrl-C" in first, first
        write(d.path("m.py"), "X = 2\n")
        screen.read_until(b"batch 1 ")
        assert b"following" not in screen.out.split(b"\r\n", 1)[1]
        os.kill(pid, signal.SIGINT)
        _, status = os.waitpid(pid, 0)
    finally:
        reap(pid)
        os.close(fd)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    # Not on a terminal: events only, as before.
    proc = subprocess.Popen([PYHOTCTL, "--socket", d.socket, "tail", "-n", "1"],
                            stdout=subprocess.PIPE, env=clean_env())
    try:
        first = proc.stdout.readline().decode()
        assert "following" not in first and "batch 1 ok" in first, first
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(TIMEOUT)


@contextlib.contextmanager
def _repl_on_a_pty(d, home):
    """pyhotctl repl on a pty with HOME=home, at its first prompt (the screen emptied);
    left with Ctrl-D when the block ends, and then checked to have exited with 0."""
    pid, fd = _spawn_on_a_pty([PYHOTCTL, "--socket", d.socket, "repl"], clean_env(HOME=str(home)))
    screen = _Screen(fd)
    try:
        screen.read_until(b">>> ")
        screen.out = b""
        yield screen
        status = leave_console(pid, fd)
    finally:
        reap(pid)
        os.close(fd)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_ctrl_c_in_the_repl_interrupts_the_statement(pyhotd, tmp_path):
    d = pyhotd({"m.py": "X = 1\n"})
    with _repl_on_a_pty(d, tmp_path) as screen:
        fd = screen.fd
        os.write(fd, b"import time\n")
        screen.read_until(b">>> ")
        screen.out = b""
        os.write(fd, b"try:\n    time.sleep(100)\nexcept KeyboardInterrupt:\n"
                     b"    print('caught it')\n    raise\n\n")
        # Each line typed is a repl job of a moment (an incomplete input); the statement
        # is the one that stays.
        wait_for(lambda: (d.status()["job"] or {"age_ms": 0})["age_ms"] > 300,
                 what="the statement to run")
        began = time.monotonic()
        os.write(fd, b"\x03")                              # Ctrl-C
        text = screen.read_until(b"KeyboardInterrupt").decode()
        screen.read_until(b">>> ")
        assert time.monotonic() - began < 2 * SCALE + 1
        assert "caught it" in text, text
        assert d.status()["job"] is None
        # The console goes on: the next statement runs, in the same namespace.
        screen.out = b""
        os.write(fd, b"6 * 7\n")
        screen.read_until(b"42\r\n>>> ")
        # Ctrl-C at the prompt drops the line being typed, as python3's does.
        screen.out = b""
        os.write(fd, b"this is not python")
        time.sleep(0.2)
        os.write(fd, b"\x03")
        screen.read_until(b"KeyboardInterrupt")
        screen.read_until(b">>> ")
        screen.out = b""
        os.write(fd, b"'still here'\n")
        screen.read_until(b"'still here'\r\n>>> ")


def test_the_repl_edits_lines_and_keeps_history_with_libedit(pyhotd, tmp_path):
    """pyhotctl is linked statically (CMakeLists.txt) and still loads libedit for repl: the
    up arrow brings the previous line back, and ~/.pyhot_history keeps what was typed."""
    d = pyhotd({"m.py": "X = 1\n"})
    with _repl_on_a_pty(d, tmp_path) as screen:
        os.write(screen.fd, b"n = 20\n")
        screen.read_until(b">>> ")
        os.write(screen.fd, b"n + 1\n")
        screen.read_until(b"21\r\n>>> ")
        screen.out = b""
        os.write(screen.fd, b"\x1b[A\n")                 # up arrow: "n + 1" again
        screen.read_until(b"21\r\n>>> ")
    history = (tmp_path / ".pyhot_history").read_text()
    assert "n\\040=\\04020" in history and "n\\040+\\0401" in history, history
