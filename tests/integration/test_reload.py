"""Reload semantics (DESIGN "Reload semantics"), observed through events and `exec`."""

import glob
import importlib.util
import os
import py_compile
import re
import struct
import time

import pytest

from conftest import QUIET, wait_for

TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")

STATEFUL = """\
VALUE = {value}
try:
    HISTORY
except NameError:
    HISTORY = []
HISTORY.append(VALUE)


def get():
    return VALUE
"""


def reloads_and_batches(events):
    return [e for e in events if e["event"] in ("reload", "batch")]


def test_edit_gives_one_ok_reload_and_keeps_state(pyhotd):
    d = pyhotd({"m.py": STATEFUL.format(value=1)})
    assert d.module_value("m", "VALUE") == 1
    assert d.module_value("m", "HISTORY") == [1]
    sub = d.subscriber()

    path = d.write("m.py", STATEFUL.format(value=2))
    batch, reloads = sub.wait_batch(path)

    assert batch["result"] == "ok", batch
    assert batch["paths"] == [path]
    assert batch["modules"] == ["m"]
    assert isinstance(batch["duration_ms"], (int, float)) and batch["duration_ms"] >= 0
    assert isinstance(batch["latency_ms"], (int, float)) and batch["latency_ms"] >= 0
    assert len(reloads) == 1, reloads
    r = reloads[0]
    assert (r["module"], r["path"], r["result"]) == ("m", path, "ok")
    assert isinstance(r["patched"], list) and isinstance(r["replaced"], list)
    assert "error" not in r
    for e in (r, batch):
        assert TIME_RE.match(e["time"]), e["time"]
    assert r["seq"] < batch["seq"]
    # Exactly one: no second reload or batch for the same edit.
    assert reloads_and_batches(sub.quiet()) == []

    # The new code runs; the state the module keeps by the NameError idiom survived.
    assert d.module_value("m", "VALUE") == 2
    assert d.module_value("m", "HISTORY") == [1, 2]
    assert d.eval("m.get()", setup="import m") == 2
    st = d.status()
    assert st["reloads"]["ok"] == 1 and st["batches"] == 1
    assert st["last_batch"]["batch"] == batch["batch"]


def test_syntax_error_keeps_old_code_then_fix_applies(pyhotd):
    d = pyhotd({"m.py": STATEFUL.format(value=1)})
    sub = d.subscriber()

    broken = "VALUE = 2\n\n\ndef broken(:\n    return 1\n"
    path = d.write("m.py", broken)
    batch, reloads = sub.wait_batch(path)
    assert batch["result"] == "error", batch
    assert [r["result"] for r in reloads] == ["error"], reloads
    error = reloads[0]["error"]
    assert error["type"] == "SyntaxError"
    assert error["line"] == 4, error
    assert error["file"] == path, error
    assert error["message"]
    assert batch["error"]["line"] == 4
    # Nothing ran: the old code still answers.
    assert d.module_value("m", "VALUE") == 1
    assert d.eval("m.get()", setup="import m") == 1
    assert d.module_value("m", "HISTORY") == [1]
    assert d.eval("hasattr(m, 'broken')") is False

    d.write("m.py", STATEFUL.format(value=3))
    batch, reloads = sub.wait_batch(path)
    assert batch["result"] == "ok", batch
    assert [(r["module"], r["result"]) for r in reloads] == [("m", "ok")]
    assert d.module_value("m", "VALUE") == 3
    assert d.module_value("m", "HISTORY") == [1, 3]
    st = d.status()
    assert st["reloads"]["error"] == 1 and st["reloads"]["ok"] == 1


def test_exception_at_top_level_rolls_back(pyhotd):
    d = pyhotd({"m.py": STATEFUL.format(value=1)})
    d.exec("import m\nold_get = m.get")
    sub = d.subscriber()

    failing = ("VALUE = 2\n"
               "ADDED_BY_FAILED_RUN = 'new'\n"
               "def get():\n"
               "    return 'new code'\n"
               "raise RuntimeError('boom at import')\n")
    path = d.write("m.py", failing)
    batch, reloads = sub.wait_batch(path)
    assert batch["result"] == "rolled_back", batch
    assert [(r["module"], r["result"]) for r in reloads] == [("m", "rolled_back")], reloads
    error = reloads[0]["error"]
    assert error["type"] == "RuntimeError"
    assert "boom at import" in error["message"]
    assert error["file"] == path and error["line"] == 5, error
    assert "boom at import" in error["traceback"]

    # The module's namespace is the snapshot again: old values, old function, and the
    # names the failed run added are gone.
    assert d.module_value("m", "VALUE") == 1
    assert d.eval("m.get()") == 1
    assert d.eval("m.get is old_get") is True
    assert d.eval("hasattr(m, 'ADDED_BY_FAILED_RUN')") is False
    assert d.module_value("m", "HISTORY") == [1]
    assert d.eval("sys.modules['m'] is m", setup="import sys") is True
    assert d.status()["reloads"]["rolled_back"] == 1

    d.write("m.py", STATEFUL.format(value=4))
    batch, _ = sub.wait_batch(path)
    assert batch["result"] == "ok", batch
    assert d.module_value("m", "VALUE") == 4


def test_failed_batch_rolls_back_every_module_and_stays_pending(pyhotd):
    """Two files in one batch (a long settle window makes one batch of them): b raises, so
    a's good edit is rolled back too; fixing b alone then applies both."""
    d = pyhotd({"a.py": "VALUE = 'a1'\n", "b.py": "VALUE = 'b1'\n"}, args=["--settle-ms", "300"])
    sub = d.subscriber()

    pa = d.write("a.py", "VALUE = 'a2'\n")
    pb = d.write("b.py", "VALUE = 'b2'\nraise ValueError('b is broken')\n")
    batch, reloads = sub.wait_batch(pb)
    assert sorted(batch["paths"]) == sorted([pa, pb]), batch
    assert batch["result"] == "rolled_back", batch
    by_module = {r["module"]: r for r in reloads}
    assert by_module["b"]["result"] == "rolled_back", reloads
    # a is part of the batch: whether it ran before b or not, it must not count as applied.
    assert by_module.get("a", {}).get("result") != "ok", reloads
    assert d.module_value("a", "VALUE") == "a1"
    assert d.module_value("b", "VALUE") == "b1"

    # Only b is fixed; a's pending edit goes with this batch.
    d.write("b.py", "VALUE = 'b3'\n")
    batch, reloads = sub.wait_batch(pb)
    assert batch["result"] == "ok", batch
    assert pa in batch["paths"], batch
    assert sorted(r["module"] for r in reloads if r["result"] == "ok") == ["a", "b"], reloads
    assert d.module_value("a", "VALUE") == "a2"
    assert d.module_value("b", "VALUE") == "b3"


def test_failed_batch_reports_every_module(pyhotd):
    """Every module of a failed batch gets a reload event (rolled_back or skipped), not only
    those that ran before the failing one."""
    d = pyhotd({"a.py": "VALUE = 1\n", "b.py": "VALUE = 1\n", "c.py": "VALUE = 1\n"},
               args=["--settle-ms", "300"])
    sub = d.subscriber()
    paths = [d.write("a.py", "VALUE = 2\n"),
             d.write("b.py", "VALUE = 2\nraise KeyError('b')\n"),
             d.write("c.py", "VALUE = 2\n")]
    batch, reloads = sub.wait_batch(paths[1])
    assert sorted(batch["paths"]) == sorted(paths)
    assert batch["result"] == "rolled_back"
    results = {r["module"]: r["result"] for r in reloads}
    assert set(results) == {"a", "b", "c"}, reloads
    assert results["b"] == "rolled_back"
    assert all(v in ("rolled_back", "skipped") for v in results.values()), results
    for m in "abc":
        assert d.module_value(m, "VALUE") == 1


def test_syntax_error_in_one_file_skips_the_others(pyhotd):
    d = pyhotd({"a.py": "VALUE = 1\n", "b.py": "VALUE = 1\n"}, args=["--settle-ms", "300"])
    sub = d.subscriber()
    pa = d.write("a.py", "VALUE = 2\n")
    pb = d.write("b.py", "VALUE = 2\nif True\n    pass\n")
    batch, reloads = sub.wait_batch(pb)
    assert batch["result"] == "error"
    results = {r["module"]: r for r in reloads}
    assert results["b"]["result"] == "error" and results["b"]["error"]["line"] == 2, reloads
    assert results["b"]["error"]["file"] == pb
    assert results["a"]["result"] == "skipped", reloads
    assert d.module_value("a", "VALUE") == 1 and d.module_value("b", "VALUE") == 1
    assert pa in batch["paths"]


def _pyc_header(path):
    pycs = glob.glob(os.path.join(os.path.dirname(path), "__pycache__", "m.*.pyc"))
    assert len(pycs) == 1, pycs
    with open(pycs[0], "rb") as f:
        _magic, flags, mtime, size = struct.unpack("<4sIII", f.read(16))
    return flags, mtime, size


def test_same_size_edit_in_same_second_runs_new_source(pyhotd):
    """The stale .pyc trap: a cached .pyc records the source's mtime in whole seconds and
    its size; an edit of the same size with the same mtime must still run the new source."""
    # The .pyc is written before the daemon starts, as a previous run would have left it
    # (the daemon writes one too unless PYTHONDONTWRITEBYTECODE is set). A long settle
    # window: the mtime is put back before the batch is taken.
    def compile_pyc(root):
        src = os.path.join(root, "m.py")
        py_compile.compile(src, cfile=importlib.util.cache_from_source(src), doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)

    d = pyhotd({"m.py": "VALUE = 1\n"}, args=["--settle-ms", "200"], prepare=compile_pyc,
               env={"PYTHONDONTWRITEBYTECODE": None})
    assert d.module_value("m", "VALUE") == 1
    path = d.path("m.py")
    before = os.stat(path)
    flags, pyc_mtime, pyc_size = _pyc_header(path)
    assert flags == 0 and pyc_mtime == int(before.st_mtime) and pyc_size == before.st_size, \
        "the start-up import did not leave a timestamp .pyc of m.py"
    sub = d.subscriber()

    d.write("m.py", "VALUE = 2\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    # The trap is armed: same size, same mtime as the .pyc records.
    assert (after.st_size, int(after.st_mtime)) == (pyc_size, pyc_mtime)

    batch, reloads = sub.wait_batch(path)
    assert batch["result"] == "ok", batch
    assert [(r["module"], r["result"]) for r in reloads] == [("m", "ok")]
    assert d.module_value("m", "VALUE") == 2

    # The same again by an explicit reload command (no file event involved).
    d.write("m.py", "VALUE = 3\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    result = d.conn.call("reload", targets=["m"])
    assert result["batch"]["result"] == "ok"
    assert d.module_value("m", "VALUE") == 3


@pytest.mark.parametrize("mode", ["definitions", "module"])
def test_touch_and_identical_rewrite_do_not_reload(pyhotd, mode):
    counting = ("try:\n    LOADS += 1\nexcept NameError:\n    LOADS = 1\nVALUE = {value}\n")
    d = pyhotd({"m.py": counting.format(value=1), "marker.py": "X = 1\n"}, mode=mode)
    runs = 2 if mode == "module" else 1  # the unchanged counting statement runs again?
    sub = d.subscriber()
    path = d.path("m.py")

    os.utime(path)                                   # touch
    d.write("m.py", counting.format(value=1))       # same bytes again
    time.sleep(0.05)
    d.write("m.py", counting.format(value=1))       # and again
    # A later edit of another file: everything about m.py has been handled before it.
    marker = d.write("marker.py", "X = 2\n")
    events = sub.events_until(lambda e: e["event"] == "batch" and marker in e["paths"])
    for e in events:
        if e["event"] == "reload" and e["path"] == path:
            assert e["result"] == "skipped" and e["reason"] == "content unchanged", e
        if e["event"] == "batch" and path in e["paths"]:
            assert "m" not in e["modules"], e
    assert d.module_value("m", "LOADS") == 1
    assert d.status()["reloads"]["ok"] == 1  # marker only

    # A real edit still reloads, once.
    d.write("m.py", counting.format(value=2))
    batch, reloads = sub.wait_batch(path)
    assert [(r["module"], r["result"]) for r in reloads] == [("m", "ok")]
    assert d.module_value("m", "LOADS") == runs
    # Saving that same content again is not a second reload.
    d.write("m.py", counting.format(value=2))
    for e in sub.quiet(QUIET * 2):
        assert not (e["event"] == "reload" and e["result"] == "ok"), e
    assert d.module_value("m", "LOADS") == runs and d.module_value("m", "VALUE") == 2


def test_edit_back_to_applied_content_is_skipped_after_failure(pyhotd):
    """A broken save followed by a save of the last applied content: nothing new to apply,
    and the broken file is no longer pending."""
    d = pyhotd({"m.py": "VALUE = 1\n"})
    sub = d.subscriber()
    path = d.write("m.py", "VALUE = (\n")
    batch, _ = sub.wait_batch(path)
    assert batch["result"] == "error"
    d.write("m.py", "VALUE = 1\n")
    batch, reloads = sub.wait_batch(path)
    assert batch["result"] in ("ok", "skipped"), batch
    assert all(r["result"] in ("ok", "skipped") for r in reloads), reloads
    assert d.module_value("m", "VALUE") == 1
    # Nothing left pending: an edit of another module is a batch of that file only.
    other = d.write("other.py", "Y = 1\n")
    batch, _ = sub.wait_batch(other)
    assert batch["paths"] == [other], batch


APP = """\
import threading
import time

import worker

try:
    RESULTS
except NameError:
    RESULTS = []
    THREADS = []


def main():
    THREADS.append(threading.get_ident())
    while True:
        RESULTS.append(worker.step())
        time.sleep(0.005)
"""


def test_entry_thread_keeps_running_across_reloads(pyhotd):
    d = pyhotd({"app.py": APP, "worker.py": "def step():\n    return 'v1'\n"},
               args=["--entry", "app:main"])
    d.exec("import app, threading")
    wait_for(lambda: d.eval("'v1' in app.RESULTS"), what="the entry thread's first step")
    assert d.eval("len(app.THREADS)") == 1
    thread = d.eval("app.THREADS[0]")
    assert d.eval("[t.ident for t in threading.enumerate() if t.ident == %d] != []" % thread) is True
    sub = d.subscriber()

    path = d.write("worker.py", "def step():\n    return 'v2'\n")
    batch, reloads = sub.wait_batch(path)
    assert batch["result"] == "ok", batch
    assert "worker" in batch["modules"]
    wait_for(lambda: d.eval("'v2' in app.RESULTS"), what="the entry thread to run the new worker.step")
    # Same thread, still alive, still appending; the results kept across the reload.
    assert d.eval("app.THREADS") == [thread]
    assert d.eval("any(t.ident == %d and t.is_alive() for t in threading.enumerate())" % thread)
    assert d.eval("app.RESULTS[0]") == "v1"
    n = d.eval("len(app.RESULTS)")
    time.sleep(0.1)
    assert d.eval("len(app.RESULTS)") > n
    assert d.eval("app.RESULTS[-1]") == "v2"


def test_entry_that_cannot_start_is_reported(pyhotd):
    """A missing entry function must not go unnoticed: pyhotd either refuses to start
    (exit 1) or keeps serving, and either way says so in its log."""
    d = pyhotd({"app.py": "X = 1\n"}, args=["--entry", "app:nope"], ready=False)
    if not d.ready_or_exited():
        d.expect_clean_exit = False
        assert d.proc.returncode == 1, d.proc.returncode
    wait_for(lambda: "app:nope" in d.log(), what="the log to name the entry app:nope")


def test_entry_that_raises_is_logged(pyhotd):
    d = pyhotd({"app.py": "def main():\n    raise RuntimeError('app died')\n"},
               args=["--entry", "app:main"])
    wait_for(lambda: "app died" in d.log(), what="the entry's exception in the log")
    assert d.conn.call("ping")["pong"] is True


def test_deleted_file_keeps_module_loaded(pyhotd):
    d = pyhotd({"m.py": "VALUE = 1\n"})
    sub = d.subscriber()
    path = d.path("m.py")
    os.unlink(path)
    batch, reloads = sub.wait_batch(path)
    assert batch["result"] == "skipped", batch
    if reloads:
        assert reloads[0]["result"] == "skipped" and reloads[0]["module"] == "m", reloads
        assert "deleted" in reloads[0]["reason"]
    assert d.module_value("m", "VALUE") == 1
    # Recreated with new content: reloads into the same module.
    d.write("m.py", "VALUE = 2\n")
    batch, reloads = sub.wait_batch(path)
    assert batch["result"] == "ok", batch
    assert d.module_value("m", "VALUE") == 2


DEP_A = "CONST = {value}\n\ndef f():\n    return {value}\n"
DEP_B = "from a import CONST, f\n\ndef both():\n    return CONST, f()\n"


def test_dependents_are_reloaded(pyhotd):
    """Strategy dependents (the default): b does `from a import CONST`; editing a reloads b
    after it, so b sees the new value (DESIGN "Reload semantics" 3)."""
    d = pyhotd({"a.py": DEP_A.format(value=1), "b.py": DEP_B})
    assert d.eval("b.both()", setup="import b") == (1, 1)
    sub = d.subscriber()
    path = d.write("a.py", DEP_A.format(value=2))
    batch, reloads = sub.wait_batch(path)
    assert batch["result"] == "ok", batch
    assert batch["modules"] == ["a", "b"], batch
    assert d.module_value("b", "CONST") == 2
    assert d.eval("b.both()") == (2, 2)


def test_identity_kept_and_old_references_run_new_code(pyhotd):
    """After a reload, references held elsewhere run the new code and classes keep their
    identity (DESIGN "Reload semantics" 6)."""
    src = ("class Greeter:\n    def hello(self):\n        return 'hello {v}'\n\n"
           "def f():\n    return '{v}'\n")
    d = pyhotd({"m.py": src.format(v=1)})
    d.exec("import m\nold_f = m.f\nold_cls = m.Greeter\ninst = m.Greeter()")
    sub = d.subscriber()
    path = d.write("m.py", src.format(v=2))
    batch, reloads = sub.wait_batch(path)
    assert batch["result"] == "ok"
    assert d.eval("m.f()") == "2"
    assert d.eval("old_f()") == "2"
    assert d.eval("m.f is old_f") is True
    assert d.eval("m.Greeter is old_cls") is True
    assert d.eval("isinstance(inst, m.Greeter)") is True
    assert d.eval("inst.hello()") == "hello 2"
    assert "m.f" in reloads[0]["patched"] or "f" in reloads[0]["patched"], reloads
