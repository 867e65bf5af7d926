"""exec through the real daemon: output and values, the watched interpreter's namespace,
and deadlines (a job past its timeout is interrupted, again if it swallows the
TimeoutError; a reload past its deadline rolls back)."""

import os
import time

import pytest

from conftest import SCALE, TIMEOUT, exec_in_thread, wait_for

# These tests count how often a module's top level runs (a reload each): whole-module
# reloads. test_reload_definitions.py covers the default, definition-level mode.
pytestmark = pytest.mark.reload_mode("module")


# ---- exec --------------------------------------------------------------------------------------

def test_exec(pyhotd):
    d = pyhotd({"m.py": "X = 1\n"})
    c = d.client()
    assert c.call("exec", code="1 + 2") == {"stdout": "", "stderr": "", "value": "3"}
    assert c.call("exec", code="'é' * 2")["value"] == repr("éé")
    assert c.call("exec", code="None")["value"] is None
    assert c.call("exec", code="x = 21")["value"] is None
    assert c.call("exec", code="x * 2")["value"] == "42"          # one namespace (__main__)
    assert c.call("exec", code="__name__")["value"] == "'__main__'"
    # The value of a final expression statement, after the statements before it.
    assert c.call("exec", code="import m\ny = m.X + 4\ny * 2")["value"] == "10"
    assert c.call("exec", code="_")["value"] == "10"
    assert c.call("exec", code="y = 3\nprint(y)") == {"stdout": "3\n", "stderr": "", "value": None}
    assert c.call("exec", code="if True:\n    z = 1\n")["value"] is None

    r = c.call("exec", code="import sys\nprint('to out')\nprint('to err', file=sys.stderr)\n")
    assert r == {"stdout": "to out\n", "stderr": "to err\n", "value": None}

    r = c.request("exec", code="print('before')\ndef f():\n    raise ValueError('bad thing')\nf()\n")
    assert r["ok"] is False, r
    e = r["error"]
    assert e["code"] == "python_error"
    assert e["type"] == "ValueError" and e["message"] == "bad thing"
    assert "ValueError: bad thing" in e["traceback"]
    assert "raise ValueError('bad thing')" in e["traceback"]     # the source line is shown
    assert e["line"] == 3
    assert e["stdout"] == "before\n" and e["stderr"] == ""

    r = c.request("exec", code="def (:\n")
    assert r["ok"] is False and r["error"]["code"] == "python_error"
    assert r["error"]["type"] == "SyntaxError"

    # Nothing in exec ends the daemon.
    for code in ("raise SystemExit(3)", "import sys; sys.exit('bye')", "raise KeyboardInterrupt"):
        r = c.request("exec", code=code)
        assert r["ok"] is False and r["error"]["code"] == "python_error", (code, r)
        assert r["error"]["type"] in ("SystemExit", "KeyboardInterrupt"), (code, r)
        assert c.request("ping")["ok"] is True
    assert d.alive()
    assert c.call("exec", code="x")["value"] == "21"


def test_exec_runs_in_the_watched_interpreter(pyhotd):
    d = pyhotd({"m.py": "VALUE = 1\n"})
    # The embedded interpreter is the system python3; the watch root is on sys.path.
    assert d.eval("sys.executable", setup="import sys") == "/usr/bin/python3"
    assert d.eval("sys.path[0]") == d.root
    assert d.eval("sys.modules['m'].__file__") == d.path("m.py")


# ---- deadlines ---------------------------------------------------------------------------------

DEADLINE_CONFIG = """\
[daemon]
socket = {socket}
log_level = debug

[watch]
root = {root}
settle_ms = 10
import = all

[python]
entry = app:main

[reload]
timeout_ms = 5000
strategy = dependents

[run]
timeout_ms = 1000
"""


@pytest.mark.parametrize("code", [
    "import time; time.sleep(30)",
    "while True:\n    pass\n",
    "import os\nr, w = os.pipe()\nos.read(r, 1)\n",
], ids=["sleep", "busy-loop", "blocking-read"])
def test_exec_deadline(pyhotd, code):
    d = pyhotd({"app.py": "def main():\n    pass\n"}, config=DEADLINE_CONFIG)
    t, box = exec_in_thread(d, code)
    # While it runs, another connection is answered at once and sees the job.
    other = d.client()

    def running_job():
        begin = time.monotonic()
        st = other.call("status")
        assert time.monotonic() - begin < 0.5 * SCALE, "status was slow while a job ran"
        return st["job"]
    job = wait_for(running_job, timeout=2 * SCALE, what="status to show the running exec job")
    assert job["kind"] == "exec" and job["id"] >= 1 and job["age_ms"] >= 0, job
    assert other.request("ping")["ok"] is True

    t.join(TIMEOUT)
    assert not t.is_alive(), "exec never answered"
    assert "exception" not in box, box
    reply = box["reply"]
    assert reply["ok"] is False, reply
    assert reply["error"]["code"] == "timeout", reply
    assert reply["error"]["type"] == "TimeoutError", reply
    assert 0.9 < box["elapsed"] < 1 + 4 * SCALE, box["elapsed"]
    # The next job is not hit by the deadline of the one before.
    assert d.exec("import time; time.sleep(0.5)") == {"stdout": "", "stderr": "", "value": None}
    assert d.exec("'survived'")["value"] == "'survived'"
    assert other.call("status")["job"] is None


def test_exec_that_swallows_timeout_is_interrupted_again(pyhotd):
    d = pyhotd({"app.py": "def main():\n    pass\n"}, config=DEADLINE_CONFIG)
    code = ("import time\n"
            "try:\n    time.sleep(30)\nexcept TimeoutError:\n    pass\n"
            "time.sleep(30)\n")
    t, box = exec_in_thread(d, code)
    t.join(TIMEOUT)
    assert not t.is_alive()
    assert box["reply"]["error"]["code"] == "timeout", box


def test_reload_deadline_rolls_back(pyhotd):
    config = DEADLINE_CONFIG.replace("timeout_ms = 5000", "timeout_ms = 500").replace(
        "entry = app:main\n", "")
    d = pyhotd({"slow.py": "VALUE = 1\n"}, config=config)
    sub = d.subscriber()
    path = d.write("slow.py", "import time\nVALUE = 2\ntime.sleep(30)\n")
    batch, reloads = sub.wait_batch(path, timeout=TIMEOUT)
    assert batch["result"] == "rolled_back", batch
    assert reloads[0]["error"]["type"] == "TimeoutError", reloads
    assert d.module_value("slow", "VALUE") == 1


# ---- interrupting a statement ------------------------------------------------------------

# Marks FLAG.started once inside its try block: an interrupt that comes earlier (the job
# is already running, its `import time` is not done) would end it before the handler.
STATEMENT = ("import time\n"
             "try:\n    open(%(flag)r + '.started', 'w').close()\n    time.sleep(60)\n"
             "except KeyboardInterrupt as exc:\n"
             "    open(%(flag)r, 'w').write(str(exc))\n    raise\n")


def statement(flag):
    return STATEMENT % {"flag": flag}


def wait_started(flag):
    wait_for(lambda: os.path.exists(flag + ".started"), what="the statement to sleep")


def test_a_disconnecting_client_cancels_its_statement(pyhotd, tmp_path):
    """A client that leaves while its exec runs: the statement gets KeyboardInterrupt and
    the python thread is free for the next job at once, not after the exec deadline."""
    d = pyhotd({"m.py": "X = 1\n"})
    flag = str(tmp_path / "interrupted")
    leaving = d.client()
    leaving.send("exec", code=statement(flag))
    wait_started(flag)
    queued = d.client()
    queued_id = queued.send("exec", code="'queued'")
    leaving.close()
    wait_for(lambda: os.path.exists(flag), what="the statement to be interrupted")
    assert open(flag).read() == "pyhot: the client disconnected"
    assert queued.response(queued_id)["result"]["value"] == "'queued'"
    assert d.status()["job"] is None
    # A statement queued behind it by the leaving client is dropped too.
    leaving = d.client()
    os.unlink(flag + ".started")
    leaving.send("exec", code=statement(flag))
    wait_started(flag)
    leaving.send("exec", code="open(%r, 'w').write('ran')" % (flag + ".2"))
    wait_for(lambda: d.status()["queued_jobs"] == 1, what="the second exec to queue")
    leaving.close()
    wait_for(lambda: d.status()["job"] is None and d.status()["queued_jobs"] == 0,
             what="both statements to go")
    assert not os.path.exists(flag + ".2")


def test_a_long_statement_yields_to_a_reload(pyhotd, tmp_path):
    """A save while a repl or exec statement sleeps: the reload does not wait for the
    statement's deadline; the statement is interrupted (KeyboardInterrupt) once the reload
    has waited a second, and its client is told why."""
    d = pyhotd({"m.py": "X = 1\n"})
    sub = d.subscriber()
    flag = str(tmp_path / "interrupted")
    runner = d.client()
    exec_id = runner.send("exec", code=statement(flag))
    wait_started(flag)
    began = time.monotonic()
    path = d.write("m.py", "X = 2\n")
    batch, _ = sub.wait_batch(path)
    waited = time.monotonic() - began
    assert batch["result"] == "ok", batch
    assert d.module_value("m", "X") == 2
    reply = runner.response(exec_id)
    assert reply["ok"] is False and reply["error"]["code"] == "interrupted", reply
    assert reply["error"]["type"] == "KeyboardInterrupt", reply
    assert "waiting reload" in reply["error"]["message"]
    assert open(flag).read() == "pyhot: interrupted so that a waiting reload can run"
    # Within its grace of 1 s plus scheduling, far from the exec deadline (30 s).
    assert waited < 1 + 4 * SCALE, waited
    # A repl statement yields the same way; its output says KeyboardInterrupt.
    repl_id = runner.send("repl", source="import time; time.sleep(60)")
    wait_for(lambda: (d.status()["job"] or {}).get("kind") == "repl", what="the repl to run")
    path = d.write("m.py", "X = 3\n")
    assert sub.wait_batch(path)[0]["result"] == "ok"
    reply = runner.response(repl_id)
    assert reply["ok"] is True and "KeyboardInterrupt" in reply["result"]["stderr"], reply
    # A short statement is never interrupted: the reload waits for it.
    exec_id = runner.send("exec", code="import time; time.sleep(0.3); 'done'")
    wait_for(lambda: (d.status()["job"] or {}).get("kind") == "exec", what="the exec to run")
    path = d.write("m.py", "X = 4\n")
    assert runner.response(exec_id)["result"]["value"] == "'done'"
    assert sub.wait_batch(path)[0]["result"] == "ok"
