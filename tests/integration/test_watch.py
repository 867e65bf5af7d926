"""File watching: new directories, atomic saves, ignored files, several roots, filters."""

import os
import shutil

import pytest

from conftest import wait_for, write

# These tests count how often a module's top level runs (a reload each): whole-module
# reloads. test_reload_definitions.py covers the default, definition-level mode.
pytestmark = pytest.mark.reload_mode("module")


def reload_events_for(sub, paths):
    """Reads events until a reload event has been seen for every path, and the batch event
    of each of those reloads; returns {path: reload event}."""
    paths = set(paths)
    found = {}
    batches_seen = set()

    def seen_all(e):
        if e["event"] == "reload" and e["path"] in paths:
            found.setdefault(e["path"], e)
        if e["event"] == "batch":
            batches_seen.add(e["batch"])
        return set(found) == paths and {r["batch"] for r in found.values()} <= batches_seen

    try:
        sub.next_event(seen_all)
    except TimeoutError:
        raise AssertionError("no reload event for %s" % sorted(paths - set(found)))
    return found


def test_new_package_directory_is_watched(pyhotd):
    d = pyhotd({"m.py": "X = 1\n"})
    assert d.status()["watched_dirs"] == 1
    sub = d.subscriber()

    # Files written right after mkdir, before the daemon can have added the new watch.
    pkg = os.path.join(d.root, "pkg")
    os.mkdir(pkg)
    init = write(os.path.join(pkg, "__init__.py"), "")
    mod = write(os.path.join(pkg, "mod.py"), "VALUE = 1\n")

    # Not missed: each is reported, as a file that was never imported.
    found = reload_events_for(sub, [init, mod])
    for path, e in found.items():
        assert (e["module"], e["result"], e["reason"]) == (None, "skipped", "not imported"), e
    wait_for(lambda: d.status()["watched_dirs"] == 2, what="watched_dirs == 2")

    d.exec("import pkg.mod")
    assert d.module_value("pkg.mod", "VALUE") == 1
    write(mod, "VALUE = 2\n")
    batch, reloads = sub.wait_batch(mod)
    assert batch["result"] == "ok", batch
    assert [(r["module"], r["result"]) for r in reloads] == [("pkg.mod", "ok")]
    assert d.module_value("pkg.mod", "VALUE") == 2


def test_nested_new_directories_are_scanned(pyhotd):
    d = pyhotd({"m.py": "X = 1\n"})
    sub = d.subscriber()
    deep = os.path.join(d.root, "a", "b", "c")
    os.makedirs(deep)
    files = [write(os.path.join(d.root, "a", "__init__.py"), ""),
             write(os.path.join(d.root, "a", "b", "__init__.py"), ""),
             write(os.path.join(deep, "__init__.py"), ""),
             write(os.path.join(deep, "leaf.py"), "VALUE = 'deep1'\n")]
    found = reload_events_for(sub, files)
    assert all(e["reason"] == "not imported" for e in found.values()), found
    wait_for(lambda: d.status()["watched_dirs"] == 4, what="watched_dirs == 4")

    d.exec("import a.b.c.leaf")
    write(files[-1], "VALUE = 'deep2'\n")
    batch, reloads = sub.wait_batch(files[-1])
    assert [(r["module"], r["result"]) for r in reloads] == [("a.b.c.leaf", "ok")], reloads
    assert d.module_value("a.b.c.leaf", "VALUE") == "deep2"


def test_directory_moved_in_is_watched(pyhotd, tmp_path):
    d = pyhotd({"m.py": "X = 1\n"})
    sub = d.subscriber()
    outside = tmp_path / "outside" / "plug"
    outside.mkdir(parents=True)
    write(outside / "__init__.py", "")
    write(outside / "core.py", "VALUE = 1\n")
    os.rename(str(outside), os.path.join(d.root, "plug"))
    core = os.path.join(d.root, "plug", "core.py")
    # Its files are new to the daemon: reported, as never imported.
    found = reload_events_for(sub, [os.path.join(d.root, "plug", "__init__.py"), core])
    assert all(e["reason"] == "not imported" for e in found.values()), found
    wait_for(lambda: d.status()["watched_dirs"] == 2, what="the moved-in directory to be watched")

    d.exec("import plug.core")
    assert d.module_value("plug.core", "VALUE") == 1
    write(core, "VALUE = 2\n")
    batch, reloads = sub.wait_batch(core)
    assert ("plug.core", "ok") in [(r["module"], r["result"]) for r in reloads], reloads
    assert d.module_value("plug.core", "VALUE") == 2


def test_removed_and_recreated_directory_is_watched_again(pyhotd):
    d = pyhotd({"pkg/__init__.py": "", "pkg/mod.py": "VALUE = 1\n"})
    assert d.module_value("pkg.mod", "VALUE") == 1
    assert d.status()["watched_dirs"] == 2
    sub = d.subscriber()
    pkg = os.path.join(d.root, "pkg")
    shutil.rmtree(pkg)
    wait_for(lambda: d.status()["watched_dirs"] == 1, what="the removed directory to be dropped")
    assert d.module_value("pkg.mod", "VALUE") == 1   # still loaded

    os.mkdir(pkg)
    write(os.path.join(pkg, "__init__.py"), "")
    mod = write(os.path.join(pkg, "mod.py"), "VALUE = 2\n")
    batch, reloads = sub.wait_batch(mod)
    wait_for(lambda: d.status()["watched_dirs"] == 2, what="the recreated directory to be watched")
    ok = [r for r in reloads if r["module"] == "pkg.mod"]
    assert ok and ok[0]["result"] == "ok", reloads
    assert d.module_value("pkg.mod", "VALUE") == 2
    # And it keeps being watched.
    write(mod, "VALUE = 3\n")
    sub.wait_batch(mod)
    assert d.module_value("pkg.mod", "VALUE") == 3


def test_atomic_rename_reloads_once(pyhotd):
    d = pyhotd({"m.py": "VALUE = 1\n"})
    sub = d.subscriber()
    path = d.path("m.py")
    tmp = os.path.join(d.root, ".m.py.tmp-1234")
    write(tmp, "VALUE = 2\n")
    os.rename(tmp, path)

    batch, reloads = sub.wait_batch(path)
    assert batch["paths"] == [path], batch
    assert batch["result"] == "ok", batch
    assert [(r["module"], r["result"]) for r in reloads] == [("m", "ok")], reloads
    rest = [e for e in sub.quiet() if e["event"] in ("reload", "batch")]
    assert rest == [], rest
    assert d.module_value("m", "VALUE") == 2
    assert d.status()["reloads"]["ok"] == 1


def test_bytecode_and_editor_files_trigger_nothing(pyhotd):
    d = pyhotd({"m.py": "VALUE = 1\n", "pkg/__init__.py": "", "pkg/mod.py": "X = 1\n"})
    sub = d.subscriber()
    root = d.root
    with open(os.path.join(root, "stray.pyc"), "wb") as f:
        f.write(b"\x00" * 32)
    cache = os.path.join(root, "__pycache__")
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, "m.cpython-311.pyc"), "wb") as f:
        f.write(b"\x00" * 32)
    write(os.path.join(cache, "looks_like_source.py"), "X = 1\n")
    os.makedirs(os.path.join(root, "pkg", "__pycache__"), exist_ok=True)
    with open(os.path.join(root, "pkg", "__pycache__", "mod.cpython-311.pyc"), "wb") as f:
        f.write(b"\x00" * 32)
    for name in (".m.py.swp", "m.py~", ".#m.py", "4913", "notes.txt", "pkg/.mod.py.swx"):
        p = os.path.join(root, name)
        with open(p, "a"):
            os.utime(p)
    quiet = sub.quiet()
    assert quiet == [], "events for ignored files: %r" % quiet

    path = d.write("m.py", "VALUE = 2\n")
    batch = sub.next_event("batch")
    assert batch["paths"] == [path], batch
    assert batch["result"] == "ok"
    assert d.module_value("m", "VALUE") == 2


def test_several_roots(pyhotd):
    d = pyhotd({"m.py": "VALUE = 1\n"}, roots=2)
    second = d.roots[1]
    write(os.path.join(second, "other.py"), "VALUE = 'o1'\n")
    st = d.status()
    assert [(r["path"], r["state"]) for r in st["roots"]] == [(d.roots[0], "watching"),
                                                              (second, "watching")]
    assert st["watched_dirs"] == 2
    # Both roots are on sys.path, the watch roots first.
    assert d.eval("sys.path[:2]", setup="import sys") == d.roots
    sub = d.subscriber()
    d.exec("import other")
    path = write(os.path.join(second, "other.py"), "VALUE = 'o2'\n")
    batch, reloads = sub.wait_batch(path)
    assert [(r["module"], r["result"]) for r in reloads] == [("other", "ok")]
    assert d.module_value("other", "VALUE") == "o2"


def test_modules_of_every_root_imported_at_start(pyhotd):
    d = pyhotd({"m.py": "VALUE = 1\n", "pkg/__init__.py": "", "pkg/sub.py": "Y = 1\n"})
    names = {m["name"]: m for m in d.conn.call("modules")["modules"]}
    for name, rel in (("m", "m.py"), ("pkg", "pkg/__init__.py"), ("pkg.sub", "pkg/sub.py")):
        assert name in names, name
        assert names[name]["watched"] is True and names[name]["path"] == d.path(rel)


def test_no_import_reports_changes_without_reloading(pyhotd):
    d = pyhotd({"m.py": "VALUE = 1\n"}, args=["--no-import"])
    assert d.eval("'m' in sys.modules", setup="import sys") is False
    sub = d.subscriber()
    path = d.write("m.py", "VALUE = 2\n")
    batch, reloads = sub.wait_batch(path)
    assert [(r["module"], r["result"], r.get("reason")) for r in reloads] == \
        [(None, "skipped", "not imported")], reloads
    assert d.eval("'m' in sys.modules") is False
    # Imported by exec, it is reloaded from then on.
    d.exec("import m")
    d.write("m.py", "VALUE = 3\n")
    batch, reloads = sub.wait_batch(path)
    assert [(r["module"], r["result"]) for r in reloads] == [("m", "ok")], reloads
    assert d.module_value("m", "VALUE") == 3


def test_config_exclude_and_settle(pyhotd):
    config = ("[daemon]\nsocket = {socket}\n"
              "[watch]\nroot = {root}\nsettle_ms = 50\nexclude = gen_*.py, skipped/*\n")
    d = pyhotd({"m.py": "VALUE = 1\n", "gen_x.py": "G = 1\n", "skipped/__init__.py": "",
                "skipped/inner.py": "I = 1\n"}, config=config)
    st = d.status()
    assert st["settle_ms"] == 50
    assert st["socket"] == d.socket
    assert st["watched_dirs"] == 1, st   # an excluded directory is not watched at all
    sub = d.subscriber()
    write(d.path("gen_x.py"), "G = 2\n")
    write(d.path("skipped/inner.py"), "I = 2\n")
    path = d.write("m.py", "VALUE = 2\n")
    batch = sub.next_event("batch")
    assert batch["paths"] == [path], batch
    assert d.module_value("m", "VALUE") == 2


def test_import_error_at_start_does_not_stop_the_daemon(pyhotd):
    d = pyhotd({"good.py": "VALUE = 1\n", "bad.py": "VALUE = (\n", "raises.py": "1 / 0\n"})
    log = d.log()
    assert "bad" in log and "SyntaxError" in log, log
    assert "raises" in log and "ZeroDivisionError" in log, log
    names = [m["name"] for m in d.conn.call("modules")["modules"]]
    assert "good" in names and "bad" not in names and "raises" not in names
    assert d.module_value("good", "VALUE") == 1
    # Fixed later, it is a file no loaded module comes from: reported, then importable.
    sub = d.subscriber()
    path = d.write("bad.py", "VALUE = 2\n")
    batch, reloads = sub.wait_batch(path)
    assert [(r["module"], r["result"], r.get("reason")) for r in reloads] == \
        [(None, "skipped", "not imported")], reloads
    d.exec("import bad")
    assert d.module_value("bad", "VALUE") == 2


def test_deleted_watch_root_is_reported(pyhotd):
    d = pyhotd({"m.py": "VALUE = 1\n"}, roots=2)
    sub = d.subscriber()
    shutil.rmtree(d.roots[1])
    ev = sub.next_event("watch_error")
    assert ev["root"] == d.roots[1] and d.roots[1] in ev["message"], ev
    st = d.status()
    assert {r["path"]: r["state"] for r in st["roots"]} == {d.roots[0]: "watching",
                                                           d.roots[1]: "failed"}, st
    # The other root still works.
    path = d.write("m.py", "VALUE = 2\n")
    batch, _ = sub.wait_batch(path)
    assert batch["result"] == "ok"
    assert d.module_value("m", "VALUE") == 2
