"""run and repl through the real binaries (docs/run.md): runpy semantics, exit codes, live
streams, concurrent runs, timeouts, isolated runs with limits, preload, the console."""

import os
import pty
import select
import signal
import subprocess
import time
import zipfile

from conftest import (PYHOTCTL, SANITIZED, SCALE, TIMEOUT, clean_env, leave_console, proc_status,
                      reap, wait_for, write)


def ctl_run(pyhotctl, d, *args, **kw):
    return pyhotctl("run", *args, socket=d.socket, **kw)


def rss_kb(pid):
    return int(proc_status(pid, "VmRSS").split()[0])


def test_exit_codes_and_traceback(pyhotd, pyhotctl, tmp_path):
    d = pyhotd()
    cases = {
        "print('fine')\n": (0, "fine\n", ""),
        "raise SystemExit\n": (0, "", ""),
        "import sys; sys.exit(5)\n": (5, "", ""),
        "raise SystemExit('bad thing')\n": (1, "", "bad thing\n"),
        "print('before')\ndef f():\n    raise ValueError('boom')\nf()\n": (1, "before\n", None),
    }
    for i, (source, (code, out, err)) in enumerate(cases.items()):
        script = write(tmp_path / ("s%d.py" % i), source)
        r = ctl_run(pyhotctl, d, script)
        assert r.returncode == code, (source, r.returncode, r.stderr)
        assert r.stdout == out, (source, r.stdout)
        if err is not None:
            assert r.stderr == err, (source, r.stderr)
    # The uncaught exception: the interpreter's traceback, the script's frames only.
    assert r.stderr.startswith("Traceback (most recent call last):\n"), r.stderr
    assert 'line 4, in <module>' in r.stderr and "line 3, in f" in r.stderr, r.stderr
    assert r.stderr.endswith("ValueError: boom\n") and "pyhot>" not in r.stderr, r.stderr
    missing = ctl_run(pyhotctl, d, str(tmp_path / "nope.py"))
    assert missing.returncode != 0 and "nope.py" in missing.stderr, missing.stderr
    assert d.alive()


def test_argv_name_globals_and_restore(pyhotd, pyhotctl, tmp_path):
    d = pyhotd()
    before = d.eval("repr(__import__('sys').argv)")
    script = write(tmp_path / "a.py", "import sys\nprint(__name__, sys.argv, __file__)\n"
                   "print(NUMBER + 1, CONFIG['k'])\n")
    r = ctl_run(pyhotctl, d, "--set", "NUMBER=41", "--set", 'CONFIG={"k": "v"}', script, "x", "--y")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "__main__ %r %s\n42 v\n" % ([script, "x", "--y"], script), r.stdout
    # The daemon's sys.argv and __main__ namespace are untouched.
    assert d.eval("repr(__import__('sys').argv)") == before
    assert d.eval("'NUMBER' in globals()") is False


def test_module_directory_and_zip(pyhotd, pyhotctl, tmp_path):
    d = pyhotd({"tool.py": "import sys\nprint('tool', __name__, sys.argv[1:])\n",
                "pkg/__init__.py": "", "pkg/__main__.py": "print('pkg main', __name__)\n"})
    r = ctl_run(pyhotctl, d, "-m", "tool", "a", "b")
    assert (r.returncode, r.stdout) == (0, "tool __main__ ['a', 'b']\n"), r.stderr
    r = ctl_run(pyhotctl, d, "-m", "pkg")
    assert (r.returncode, r.stdout) == (0, "pkg main __main__\n"), r.stderr
    app = tmp_path / "dirapp"
    app.mkdir()
    write(app / "helper.py", "WHO = 'helper'\n")
    write(app / "__main__.py", "import sys, helper\nprint('dir', helper.WHO, sys.argv[1:])\n")
    r = ctl_run(pyhotctl, d, str(app), "q")
    assert (r.returncode, r.stdout) == (0, "dir helper ['q']\n"), r.stderr
    zpath = tmp_path / "app.pyz"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("__main__.py", "import sys\nprint('zip', __name__, sys.argv[0].endswith('app.pyz'))\n")
    r = ctl_run(pyhotctl, d, str(zpath))
    assert (r.returncode, r.stdout) == (0, "zip __main__ True\n"), r.stderr
    # The directory left sys.path again.
    assert d.eval("%r in __import__('sys').path" % str(app)) is False


def test_output_streams_live_and_apart(pyhotd, tmp_path):
    d = pyhotd()
    script = write(tmp_path / "live.py", "import sys, time\nprint('one', flush=True)\n"
                   "print('to err', file=sys.stderr)\ntime.sleep(1.5)\nprint('two')\n")
    t0 = time.monotonic()
    proc = subprocess.Popen([PYHOTCTL, "--socket", d.socket, "run", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=clean_env())
    first = proc.stdout.readline()
    t_first = time.monotonic() - t0
    out, err = proc.communicate(timeout=TIMEOUT)
    total = time.monotonic() - t0
    assert proc.returncode == 0
    assert first == b"one\n" and out == b"two\n" and err == b"to err\n", (first, out, err)
    # "one" came while the script still slept: streamed, not collected at the end.
    assert t_first < total - 1.0, (t_first, total)


def test_concurrent_runs_and_reloads_meanwhile(pyhotd, pyhotctl, tmp_path):
    d = pyhotd({"m.py": "VALUE = 1\n"})
    procs = []
    for name in ("A", "B", "C"):
        script = write(tmp_path / ("%s.py" % name),
                       "import sys, time\nfor i in range(10):\n    print('%s', i, sys.argv[1])\n"
                       "    time.sleep(0.1)\n" % name)
        procs.append((name, subprocess.Popen([PYHOTCTL, "--socket", d.socket, "run", script, name * 2],
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                             env=clean_env())))
    # A reload goes through while the runs run.
    with d.subscriber() as sub:
        write(d.path("m.py"), "VALUE = 2\n")
        sub.wait_batch(d.path("m.py"))
    assert d.module_value("m", "VALUE") == 2
    assert all(p.poll() is None for _, p in procs), "the runs ended before the reload"
    for name, p in procs:
        out, err = p.communicate(timeout=TIMEOUT)
        assert p.returncode == 0, err
        assert out == "".join("%s %d %s\n" % (name, i, name * 2) for i in range(10)), out


def test_timeout_inside_sleep_and_busy_loop(pyhotd, pyhotctl, tmp_path):
    d = pyhotd()
    sleeper = write(tmp_path / "sleep.py", "import time\nprint('start', flush=True)\ntime.sleep(60)\n")
    t0 = time.monotonic()
    r = ctl_run(pyhotctl, d, "--timeout", "0.5", sleeper)
    took = time.monotonic() - t0
    assert r.returncode == 124, (r.returncode, r.stderr)
    assert r.stdout == "start\n" and "TimeoutError" in r.stderr, r.stderr
    assert took < 5 * SCALE, took
    busy = write(tmp_path / "busy.py", "while True:\n    pass\n")
    r = ctl_run(pyhotctl, d, "--timeout", "0.3", busy)
    assert r.returncode == 124 and "TimeoutError" in r.stderr, (r.returncode, r.stderr)
    # time.sleep keeps its behaviour elsewhere, and the daemon still answers.
    assert d.exec("__import__('time').sleep(0.01)")["value"] is None
    r = ctl_run(pyhotctl, d, write(tmp_path / "neg.py", "import time\ntime.sleep(-1)\n"))
    assert r.returncode == 1 and "ValueError: sleep length must be non-negative" in r.stderr, r.stderr
    assert d.alive()


def test_cwd_needs_isolate(pyhotd, pyhotctl, tmp_path):
    d = pyhotd()
    script = write(tmp_path / "cwd.py", "import os\nprint(os.getcwd())\n")
    r = ctl_run(pyhotctl, d, "--cwd", str(tmp_path), script)
    assert r.returncode == 1 and "isolate" in r.stderr, r.stderr
    r = ctl_run(pyhotctl, d, "--isolate", "--cwd", str(tmp_path), script)
    assert (r.returncode, r.stdout) == (0, os.path.realpath(str(tmp_path)) + "\n"), r.stderr


def test_isolated_exit_crash_and_memory(pyhotd, pyhotctl, tmp_path):
    d = pyhotd({"m.py": "VALUE = 'current'\n"})
    write(d.path("m.py"), "VALUE = 'edited'\n")
    wait_for(lambda: d.module_value("m", "VALUE") == "edited", what="the reload")
    r = ctl_run(pyhotctl, d, "--isolate", write(tmp_path / "cur.py", "import m, os\nprint(m.VALUE)\nos._exit(7)\n"))
    assert (r.returncode, r.stdout) == (7, "edited\n"), r.stderr

    r = ctl_run(pyhotctl, d, "--isolate", write(tmp_path / "segv.py",
                                                 "import ctypes\nprint('x', flush=True)\nctypes.string_at(0)\n"))
    if SANITIZED:
        # ASan's own SEGV handler reports the crash and exits 1 in the child.
        assert r.returncode == 1 and "AddressSanitizer: SEGV" in r.stderr, (r.returncode, r.stderr)
    else:
        assert (r.returncode, r.stdout) == (128 + signal.SIGSEGV, "x\n"), r.stderr
        r = pyhotctl("--json", "run", "--isolate", str(tmp_path / "segv.py"), socket=d.socket)
        assert '"signal":11' in r.stdout and '"signal_name":"SIGSEGV"' in r.stdout, r.stdout

    rss_before = rss_kb(d.proc.pid)
    bomb = write(tmp_path / "bomb.py", "x = []\nwhile True:\n    x.append(bytearray(32 * 1024 * 1024))\n")
    r = ctl_run(pyhotctl, d, "--isolate", "--memory", "256", bomb)
    if SANITIZED:
        # ASan's allocator reserves its own address space and gives up first.
        assert r.returncode != 0 and ("MemoryError" in r.stderr or "AddressSanitizer" in r.stderr), r.stderr
    else:
        assert r.returncode == 1 and r.stderr.rstrip().endswith("MemoryError"), (r.returncode, r.stderr)
    rss_after = rss_kb(d.proc.pid)
    assert abs(rss_after - rss_before) < 16 * 1024, (rss_before, rss_after)

    r = ctl_run(pyhotctl, d, "--isolate", "--timeout", "0.3",
                write(tmp_path / "hang.py", "import time\ntime.sleep(60)\n"))
    assert r.returncode == 124, r.stderr
    r = ctl_run(pyhotctl, d, "--isolate", "--cpu", "1", write(tmp_path / "spin.py", "while True: pass\n"))
    assert r.returncode == 128 + signal.SIGXCPU, (r.returncode, r.stderr)
    # Nothing the children did reached the daemon.
    assert d.alive() and d.module_value("m", "VALUE") == "edited"


def test_isolated_script_waits_for_its_own_children_only(pyhotd, pyhotctl, tmp_path):
    # The run's memory holder (lib/py_run.c) is a child the script must not see: wait()
    # with no children of its own raises at once, and a reap-them-all loop ends.
    d = pyhotd()
    script = write(tmp_path / "reap.py",
                   "import os\ntry:\n    os.wait()\nexcept ChildProcessError:\n    print('none')\n"
                   "pids = []\nfor code in (3, 4):\n    pid = os.fork()\n    if pid == 0:\n"
                   "        os._exit(code)\n    pids.append(pid)\nseen = {}\nwhile True:\n"
                   "    try:\n        pid, status = os.waitpid(-1, 0)\n"
                   "    except ChildProcessError:\n        break\n"
                   "    seen[pid] = os.waitstatus_to_exitcode(status)\n"
                   "print(sorted(seen.values()), sorted(seen) == sorted(pids))\n")
    for _ in range(3):  # a ready child and one forked at the request
        r = ctl_run(pyhotctl, d, "--isolate", "--timeout", "20", script)
        assert (r.returncode, r.stdout) == (0, "none\n[3, 4] True\n"), (r.returncode, r.stderr)


def test_isolated_script_sees_the_daemons_objects_through_gc(pyhotd, pyhotctl, tmp_path):
    d = pyhotd()
    d.exec("class PyhotMarker:\n    pass\nheld = PyhotMarker()")
    script = write(tmp_path / "find.py", "import gc\n"
                   "print(sum(type(o).__name__ == 'PyhotMarker' for o in gc.get_objects()))\n")
    for _ in range(3):  # a ready child and one forked at the request
        r = ctl_run(pyhotctl, d, "--isolate", script)
        assert (r.returncode, r.stdout) == (0, "1\n"), (r.returncode, r.stderr)


def test_isolated_child_killed_when_client_leaves(pyhotd, tmp_path):
    d = pyhotd()
    marker = tmp_path / "pid"
    script = write(tmp_path / "wait.py", "import os, time\nopen(%r, 'w').write(str(os.getpid()))\n"
                   "time.sleep(60)\n" % str(marker))
    proc = subprocess.Popen([PYHOTCTL, "--socket", d.socket, "run", "--isolate", script], env=clean_env())
    pid = int(wait_for(lambda: marker.exists() and marker.read_text(), what="the child"))
    proc.kill()
    proc.wait()

    def gone():
        try:
            with open("/proc/%d/stat" % pid) as f:
                return f.read().split()[2] == "Z" and False
        except (FileNotFoundError, ProcessLookupError):  # gone before the open, or the read
            return True
    wait_for(gone, what="the isolated child to be killed and reaped")


def test_preload(pyhotd, pyhotctl, tmp_path):
    d = pyhotd(config="[daemon]\nsocket = {socket}\n[watch]\nroot = {root}\n"
                      "[python]\npreload = decimal, json, no_such_module_xyz\n")
    assert d.eval("'decimal' in __import__('sys').modules") is True
    assert "no_such_module_xyz" in d.log()
    r = ctl_run(pyhotctl, d, write(tmp_path / "p.py", "import sys\nprint('decimal' in sys.modules)\n"))
    assert (r.returncode, r.stdout) == (0, "True\n")


def test_repl_through_a_pty(pyhotd, tmp_path):
    d = pyhotd()
    env = clean_env(HOME=str(tmp_path))
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(PYHOTCTL, [PYHOTCTL, "--socket", d.socket, "repl"], env)
    out = b""

    def read_until(token):
        nonlocal out
        deadline = time.monotonic() + TIMEOUT
        while token not in out:
            left = deadline - time.monotonic()
            assert left > 0, out
            if select.select([fd], [], [], left)[0]:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk

    try:
        read_until(b">>> ")
        for line in (b"x = 6", b"x * 7", b"def f():", b"    return x + 1", b"", b"f()", b"1/0",
                     b"print('printed')"):
            os.write(fd, line + b"\n")
        read_until(b"printed\r\n>>> ")
        status = leave_console(pid, fd)
    finally:
        reap(pid)
        os.close(fd)
    text = out.decode()
    assert "42\r\n" in text and "... " in text and "7\r\n" in text, text
    assert "ZeroDivisionError: division by zero" in text, text
    assert os.WEXITSTATUS(status) == 0
    # The same __main__ namespace as exec; history kept on the client.
    assert d.eval("x") == 6
    assert "x\\040*\\0407" in (tmp_path / ".pyhot_history").read_text()  # libedit's escaping
