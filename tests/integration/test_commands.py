"""The commands of the control protocol through the real daemon, by subject: information
(hello, status, stats), the interpreter (modules, reload), events (history, subscribe
filters and replay), roots (watch, unwatch), and the argument errors of each."""

import os
import time

import pytest

from conftest import Closed, wait_for, write

# These tests count how often a module's top level runs (a reload each): whole-module
# reloads. test_reload_definitions.py covers the default, definition-level mode.
pytestmark = pytest.mark.reload_mode("module")

COUNTING = "try:\n    LOADS += 1\nexcept NameError:\n    LOADS = 1\nVALUE = {value}\n"

ALL_COMMANDS = {"hello", "ping", "status", "modules", "reload", "watch", "unwatch",
                "subscribe", "history", "stats", "exec", "shutdown"}


def test_hello(pyhotd):
    d = pyhotd({"m.py": "X = 1\n"})
    r = d.conn.call("hello")
    assert r["protocol"] == 1
    assert r["pid"] == d.proc.pid
    assert r["python"].startswith("3.") and r["version"]
    assert ALL_COMMANDS <= set(r["commands"]), ALL_COMMANDS - set(r["commands"])
    # Arguments it does not know are ignored, as for every command.
    assert d.conn.call("hello", protocol=1, client="test")["protocol"] == 1


@pytest.mark.parametrize("cmd,args,what", [
    ("history", {"n": -1}, "n"),
    ("history", {"n": "5"}, "n"),
    ("history", {"n": 1.5}, "n"),
    ("history", {"events": 5}, "events"),
    ("history", {"events": ["Not A Name"]}, "events"),
    ("history", {"modules": [""]}, "modules"),
    ("history", {"modules": ["a"] * 65}, "modules"),
    ("subscribe", {"history": "all"}, "history"),
    ("subscribe", {"events": [1]}, "events"),
    ("subscribe", {"modules": {"a": 1}}, "modules"),
    ("watch", {}, "path"),
    ("watch", {"path": 7}, "path"),
    ("watch", {"path": ""}, "path"),
    ("watch", {"path": "relative/dir"}, "path"),
    ("unwatch", {}, "path"),
    ("unwatch", {"path": ["/a"]}, "path"),
    ("unwatch", {"path": "relative"}, "path"),
])
def test_argument_errors_name_the_argument(pyhotd, cmd, args, what):
    d = pyhotd({"m.py": "X = 1\n"})
    r = d.conn.request(cmd, **args)
    assert r["ok"] is False and r["error"]["code"] == "bad_argument", r
    assert what in r["error"]["message"], r
    # A refused subscribe subscribes nothing; the connection keeps working.
    assert d.conn.call("status")["subscribers"] == 0
    assert d.conn.call("ping")["pong"] is True


# ---- history -----------------------------------------------------------------------------------

def test_history(pyhotd):
    d = pyhotd({"a.py": COUNTING.format(value=1), "b.py": COUNTING.format(value=1)})
    c = d.client()
    started = c.call("history")
    assert [e["event"] for e in started["events"]] == ["started"], started
    assert started["seq"] == started["events"][-1]["seq"] and started["truncated"] is False

    for target in ("a", "b", "a"):
        c.call("reload", targets=[target])
    h = c.call("history")
    seqs = [e["seq"] for e in h["events"]]
    assert seqs == list(range(1, h["seq"] + 1)), seqs          # oldest first, no gaps
    assert [e["event"] for e in h["events"]] == ["started"] + ["reload", "batch"] * 3

    last3 = c.call("history", n=3)["events"]
    assert [e["seq"] for e in last3] == seqs[-3:]
    assert c.call("history", n=0)["events"] == []

    batches = c.call("history", events="batch")["events"]
    assert [e["event"] for e in batches] == ["batch"] * 3
    of_b = c.call("history", events=["reload", "batch"], modules=["b"])["events"]
    assert [(e["event"], e.get("module"), e.get("modules")) for e in of_b] == [
        ("reload", "b", None), ("batch", None, ["b"])]
    # Events that name no module pass a module filter; a glob matches like `modules`.
    mixed = c.call("history", modules="a*")["events"]
    assert [e["event"] for e in mixed] == ["started", "reload", "batch", "reload", "batch"]
    assert c.call("history", events="no_such_event")["events"] == []


def test_history_keeps_the_last_1000_events(pyhotd):
    d = pyhotd({"m.py": "X = 1\n"})
    c = d.client()
    # Each reload request makes two events (reload, batch).
    for _ in range(501):
        c.send("reload", targets=["m"])
    for _ in range(501):
        assert c.response()["ok"] is True
    h = c.call("history", n=5000)
    assert h["seq"] == 1 + 2 * 501
    assert len(h["events"]) == 1000
    assert [e["seq"] for e in h["events"]] == list(range(h["seq"] - 999, h["seq"] + 1))


# ---- subscribe ---------------------------------------------------------------------------------

def test_subscribe_filters(pyhotd):
    d = pyhotd({"app/__init__.py": "", "app/views.py": COUNTING.format(value=1),
                "other.py": COUNTING.format(value=1)})
    batches_only = d.client()
    assert batches_only.call("subscribe", events=["batch"])["subscribed"] is True
    app_only = d.client()
    app_only.call("subscribe", modules=["app.*"])
    everything = d.subscriber()

    d.write("other.py", COUNTING.format(value=2))
    everything.wait_batch(d.path("other.py"))
    d.write("app/views.py", COUNTING.format(value=2))
    everything.wait_batch(d.path("app/views.py"))

    ev = batches_only.next_event()
    assert ev["event"] == "batch" and ev["modules"] == ["other"], ev
    ev = batches_only.next_event()
    assert ev["event"] == "batch" and ev["modules"] == ["app.views"], ev
    assert app_only.next_event()["module"] == "app.views"       # other's events never came
    assert app_only.next_event()["modules"] == ["app.views"]
    assert batches_only.quiet() == [] and app_only.quiet() == []
    # Events that name no module still reach a module-filtered subscriber.
    d.shutdown()
    assert app_only.next_event("stopping")["event"] == "stopping"
    assert _rest_until_closed(batches_only) == []


def _rest_until_closed(client):
    got = []
    while True:
        try:
            got.append(client.read_message())
        except Closed:
            return got


def test_subscribe_again_replaces_the_filter(pyhotd):
    d = pyhotd({"m.py": COUNTING.format(value=1)})
    sub = d.client()
    sub.call("subscribe", events="reload")
    sub.call("subscribe", events="batch")
    assert d.conn.call("status")["subscribers"] == 1
    d.conn.call("reload", targets=["m"])
    assert sub.next_event()["event"] == "batch"
    assert sub.quiet() == []


def test_subscribe_with_history_replays_then_follows(pyhotd):
    d = pyhotd({"m.py": COUNTING.format(value=1)})
    for _ in range(3):
        d.conn.call("reload", targets=["m"])
    sub = d.client()
    sub.send("subscribe", history=4)
    # The response comes first, then the past events, then live ones: no gap, no repeat.
    r = sub.read_message()
    assert r["ok"] is True and r["result"]["history"] == 4, r
    last = r["result"]["seq"]
    replayed = [sub.read_message() for _ in range(4)]
    assert [e["seq"] for e in replayed] == list(range(last - 3, last + 1))
    d.conn.call("reload", targets=["m"])
    live = sub.next_event("batch")
    assert sub.seen[0]["seq"] == last + 1 and live["seq"] == last + 2

    # history with a filter counts the events that pass it; more than kept gives all.
    sub2 = d.client()
    sub2.send("subscribe", history=100, events="batch")
    r = sub2.read_message()
    assert r["result"]["history"] == 4 and r["result"]["truncated"] is False
    assert [sub2.read_message()["event"] for _ in range(4)] == ["batch"] * 4
    assert sub2.quiet() == []


# ---- stats -------------------------------------------------------------------------------------

def _check_histogram(h, count):
    assert h["count"] == count, h
    if count == 0:
        assert h["p50"] is None and h["buckets"] == []
        return
    assert 0 <= h["min"] <= h["p50"] <= h["p90"] <= h["p99"] <= h["max"], h
    assert h["min"] <= h["mean"] <= h["max"]
    assert sum(b["count"] for b in h["buckets"]) == count
    assert h["buckets"][0]["count"] > 0 and h["buckets"][-1]["count"] > 0
    for a, b in zip(h["buckets"], h["buckets"][1:]):
        assert a["to"] == b["from"] and a["from"] < a["to"]
    assert h["buckets"][0]["from"] <= h["min"] and h["max"] <= h["buckets"][-1]["to"]


def test_stats(pyhotd):
    d = pyhotd({"m.py": COUNTING.format(value=1), "bad.py": "X = 1\n"})
    c = d.client()
    st = c.call("stats")
    assert st["reloads"] == {"ok": 0, "error": 0, "rolled_back": 0, "skipped": 0}
    assert st["batches"] == {"total": 0, "ok": 0, "error": 0, "rolled_back": 0, "skipped": 0}
    assert st["events"] == 1                                    # started
    assert st["connections"]["open"] >= 1 and st["connections"]["accepted"] >= 1
    _check_histogram(st["reload_ms"], 0)
    _check_histogram(st["latency_ms"], 0)

    sub = d.subscriber()
    for value in range(2, 7):
        path = d.write("m.py", COUNTING.format(value=value))
        batch, _ = sub.wait_batch(path)
        assert batch["result"] == "ok"
    c.call("reload", targets=["m"])            # a request's batch: not save -> reloaded
    write(d.path("bad.py"), "X = 2\nraise ValueError('no')\n")
    assert sub.wait_batch(d.path("bad.py"))[0]["result"] == "rolled_back"
    assert c.request("frobnicate")["ok"] is False

    st = c.call("stats")
    assert st["reloads"]["ok"] == 6 and st["reloads"]["rolled_back"] == 1, st["reloads"]
    assert st["batches"] == {"total": 7, "ok": 6, "error": 0, "rolled_back": 1, "skipped": 0}
    _check_histogram(st["reload_ms"], 6)
    _check_histogram(st["latency_ms"], 5)
    latencies = [e["latency_ms"] for e in sub.seen if e["event"] == "batch"
                 and e["result"] == "ok" and e["paths"]]
    assert min(latencies) == pytest.approx(st["latency_ms"]["min"])
    assert max(latencies) == pytest.approx(st["latency_ms"]["max"])
    assert st["events"] == d.conn.call("history", n=0)["seq"]
    assert st["responses"]["failed"] >= 1 and st["responses"]["total"] >= 5
    assert st["connections"]["subscribers"] == 1


# ---- watch and unwatch -------------------------------------------------------------------------

def test_watch_and_unwatch(pyhotd, tmp_path):
    d = pyhotd({"m.py": "X = 1\n"})
    extra = tmp_path / "extra"
    (extra / "pkg").mkdir(parents=True)
    write(str(extra / "plugin.py"), COUNTING.format(value=1))
    write(str(extra / "pkg" / "__init__.py"), "")
    write(str(extra / "pkg" / "broken.py"), "raise RuntimeError('broken at import')\n")
    sub = d.subscriber()
    c = d.client()

    r = c.call("watch", path=str(extra) + "/")
    assert r["path"] == os.path.realpath(str(extra))
    assert sorted(r["imported"]) == ["pkg", "plugin"], r
    assert [e["module"] for e in r["errors"]] == ["pkg.broken"]
    assert r["watched_dirs"] == d.status()["watched_dirs"] == 3
    assert sub.next_event("import_error")["module"] == "pkg.broken"
    roots = d.status()["roots"]
    assert (os.path.realpath(str(extra)), "watching") in [(r["path"], r["state"]) for r in roots]
    assert d.eval("__import__('sys').path[0]") == os.path.realpath(str(extra))

    # Its modules reload on change, like those of a root given at start.
    path = write(str(extra / "plugin.py"), COUNTING.format(value=2))
    batch, reloads = sub.wait_batch(path)
    assert batch["result"] == "ok" and [x["module"] for x in reloads] == ["plugin"]
    assert d.module_value("plugin", "VALUE") == 2 and d.module_value("plugin", "LOADS") == 2
    # Modules of the first root are still reloaded, once each.
    path = d.write("m.py", "X = 2\n")
    batch, reloads = sub.wait_batch(path)
    assert [x["module"] for x in reloads] == ["m"] and batch["modules"] == ["m"], (batch, reloads)
    # New subdirectories are watched too.
    (extra / "later").mkdir()
    write(str(extra / "later" / "x.py"), "X = 1\n")
    sub.wait_batch(str(extra / "later" / "x.py"))

    for bad, code in ((str(extra), "already_watched"), (str(extra / "pkg"), "already_watched"),
                      (str(tmp_path), "already_watched"), (d.root, "already_watched"),
                      (str(tmp_path / "missing"), "not_found"),
                      (str(extra / "plugin.py"), "bad_argument")):
        r = c.request("watch", path=bad)
        assert r["ok"] is False and r["error"]["code"] == code, (bad, r)

    r = c.call("unwatch", path=str(extra))
    assert r["path"] == os.path.realpath(str(extra))
    assert r["watched_dirs"] == d.status()["watched_dirs"] == 1
    assert [x["path"] for x in d.status()["roots"]] == [d.root]
    assert d.eval("%r in __import__('sys').path" % os.path.realpath(str(extra))) is False
    write(str(extra / "plugin.py"), COUNTING.format(value=3))
    assert [e for e in sub.quiet() if e["event"] in ("reload", "batch")] == []
    assert d.module_value("plugin", "VALUE") == 2              # still loaded, not reloaded
    r = c.request("reload", targets=["plugin"])
    assert r["error"]["code"] == "not_found", r
    for bad in (str(extra), d.path("m.py"), str(tmp_path / "missing")):
        r = c.request("unwatch", path=bad)
        assert r["ok"] is False and r["error"]["code"] == "not_found", (bad, r)

    # Watched again: the modules already loaded from it are reloadable again.
    r = c.call("watch", path=str(extra))
    assert r["imported"] == ["later.x"] and r["errors"][0]["module"] == "pkg.broken"
    assert c.call("reload", targets=["plugin"])["batch"]["result"] == "ok"
    assert d.module_value("plugin", "VALUE") == 3
    # The first root can go too.
    c.call("unwatch", path=d.root)
    assert [x["path"] for x in d.status()["roots"]] == [os.path.realpath(str(extra))]


def test_watch_without_import(pyhotd, tmp_path):
    d = pyhotd({"m.py": "X = 1\n"}, args=["--no-import"])
    extra = tmp_path / "extra"
    extra.mkdir()
    write(str(extra / "late.py"), "VALUE = 1\n")
    r = d.conn.call("watch", path=str(extra))
    assert r["imported"] == [] and r["errors"] == []
    assert d.eval("'late' in __import__('sys').modules") is False
    assert d.eval("__import__('late').VALUE") == 1              # importable
    sub = d.subscriber()
    path = write(str(extra / "late.py"), "VALUE = 2\n")
    sub.wait_batch(path)
    assert d.module_value("late", "VALUE") == 2


# ---- status, modules, reload -------------------------------------------------------------------



def test_status(pyhotd):
    d = pyhotd({"m.py": COUNTING.format(value=1), "pkg/__init__.py": ""})
    c = d.client()
    st = c.call("status")
    expected = {"version", "pid", "uptime_ms", "python", "socket", "settle_ms", "roots",
                "watched_dirs", "modules_loaded", "reloads", "batches", "last_batch", "job",
                "queued_jobs", "subscribers", "ready"}
    assert expected <= set(st), expected - set(st)
    assert st["pid"] == d.proc.pid
    assert isinstance(st["version"], str) and st["version"]
    assert st["python"].startswith("3.")
    assert st["socket"] == d.socket
    assert st["settle_ms"] == 10
    assert len(st["roots"]) == 1 and {k: st["roots"][0][k] for k in ("path", "state", "watched_by",
                                                                     "polled")} == \
        {"path": d.root, "state": "watching", "watched_by": "inotify", "polled": []}, st["roots"]
    assert st["roots"][0]["why"].startswith("local "), st["roots"]
    assert st["watched_dirs"] == 2
    assert st["modules_loaded"] > 10
    assert st["reloads"] == {"ok": 0, "error": 0, "rolled_back": 0, "skipped": 0}
    assert st["batches"] == 0 and st["last_batch"] is None
    assert st["job"] is None and st["queued_jobs"] == 0
    assert st["subscribers"] == 0 and st["ready"] is True
    time.sleep(0.05)
    assert c.call("status")["uptime_ms"] > st["uptime_ms"]

    sub = d.subscriber()
    assert c.call("status")["subscribers"] == 1
    path = d.write("m.py", COUNTING.format(value=2))
    batch, _ = sub.wait_batch(path)
    st = c.call("status")
    assert st["reloads"]["ok"] == 1 and st["batches"] == 1
    assert st["last_batch"]["batch"] == batch["batch"] and st["last_batch"]["result"] == "ok"
    d.write("m.py", "VALUE = (\n")
    sub.wait_batch(path)
    st = c.call("status")
    assert st["reloads"]["error"] == 1 and st["batches"] == 2
    assert st["last_batch"]["result"] == "error"
    sub.close()
    wait_for(lambda: c.call("status")["subscribers"] == 0, what="subscribers back to 0")


def test_modules(pyhotd):
    d = pyhotd({"mymod.py": "X = 1\n", "mypkg/__init__.py": "", "mypkg/inner.py": "Y = 1\n"})
    c = d.client()
    mods = c.call("modules", pattern="my*")["modules"]
    assert sorted(m["name"] for m in mods) == ["mymod", "mypkg", "mypkg.inner"], mods
    by_name = {m["name"]: m for m in mods}
    assert by_name["mymod"] == {"name": "mymod", "path": d.path("mymod.py"), "watched": True}
    assert by_name["mypkg.inner"]["path"] == d.path("mypkg/inner.py")
    everything = c.call("modules")["modules"]
    names = [m["name"] for m in everything]
    assert "sys" in names and "mymod" in names and len(everything) > 10
    assert {m["name"]: m for m in everything}["os"]["watched"] is False
    assert c.call("modules", pattern="no_such_*")["modules"] == []
    assert [m["name"] for m in c.call("modules", pattern="mypkg.*")["modules"]] == ["mypkg.inner"]


def test_reload_command(pyhotd):
    d = pyhotd({"m.py": COUNTING.format(value=1), "broken.py": "VALUE = 1\n"})
    sub = d.subscriber()
    c = d.client()

    # By module name: runs even though the content did not change.
    result = c.call("reload", targets=["m"])
    assert result["batch"]["result"] == "ok" and result["batch"]["modules"] == ["m"], result
    assert [(r["module"], r["result"]) for r in result["reloads"]] == [("m", "ok")]
    assert d.module_value("m", "LOADS") == 2
    ev = sub.next_event("batch")
    assert ev["batch"] == result["batch"]["batch"] and ev["result"] == "ok"

    # By path, with the new content.
    path = d.path("m.py")
    # The file edit also makes a batch of its own; wait for it first.
    d.write("m.py", COUNTING.format(value=5))
    sub.wait_batch(path)
    loads = d.module_value("m", "LOADS")
    result = c.call("reload", targets=[path])
    assert result["batch"]["modules"] == ["m"], result
    assert d.module_value("m", "LOADS") == loads + 1
    assert d.module_value("m", "VALUE") == 5
    # A single string is accepted for targets.
    assert c.call("reload", targets="m")["batch"]["result"] == "ok"

    # Unknown targets.
    for target in ("no_such_module", os.path.join(d.root, "nope.py")):
        r = c.request("reload", targets=[target])
        assert r["ok"] is False and r["error"]["code"] == "not_found", r
        assert target in r["error"]["message"]
    assert d.module_value("m", "LOADS") == loads + 2

    # A failing reload answers reload_failed with the details, and changes nothing.
    write(d.path("broken.py"), "VALUE = 2\nraise RuntimeError('nope')\n")
    sub.wait_batch(d.path("broken.py"))
    r = c.request("reload", targets=["broken"])
    assert r["ok"] is False, r
    e = r["error"]
    assert e["code"] == "reload_failed", e
    assert e["type"] == "RuntimeError" and e["file"] == d.path("broken.py") and e["line"] == 2
    assert "nope" in e["traceback"] and "nope" in e["message"]
    assert e["batch"]["result"] == "rolled_back"
    assert [(x["module"], x["result"]) for x in e["reloads"]] == [("broken", "rolled_back")]
    assert d.module_value("broken", "VALUE") == 1
    write(d.path("broken.py"), "VALUE = 2\nif True\n")
    sub.wait_batch(d.path("broken.py"))
    r = c.request("reload", targets=["broken"])
    assert r["error"]["code"] == "reload_failed" and r["error"]["type"] == "SyntaxError", r
    assert r["error"]["line"] == 2


def test_reload_outside_the_roots_is_refused(pyhotd):
    """Only modules loaded from under a watch root are reloaded: a stdlib module, loaded
    but not watched, is not a target."""
    d = pyhotd({"m.py": "X = 1\n"})
    d.exec("import colorsys")
    r = d.conn.request("reload", targets=["colorsys"])
    assert r["ok"] is False and r["error"]["code"] == "not_found", r
    r = d.conn.request("reload", targets=[d.eval("colorsys.__file__")])
    assert r["ok"] is False and r["error"]["code"] == "not_found", r
