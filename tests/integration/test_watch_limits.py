"""Kernel limits: a queue overflow is rescanned, and the watch and instance limits fail
the affected roots with an error that names the sysctl to raise, the others still working.

These lower fs.inotify.* sysctls for the moment a daemon starts (root only) and restore
them in a finally block. The limits are per user, so the window is kept as short as the
daemon's start-up: other inotify users of the same uid starting in that window would be
limited too.
"""

import contextlib
import os
import signal

import pytest

from conftest import wait_for, write

# These tests count how often a module's top level runs (a reload each): whole-module
# reloads. test_reload_definitions.py covers the default, definition-level mode.
pytestmark = pytest.mark.reload_mode("module")

COUNTING = "try:\n    LOADS += 1\nexcept NameError:\n    LOADS = 1\nVALUE = {value}\n"
SYSCTL = "/proc/sys/fs/inotify/"

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="lowering fs.inotify.* sysctls needs root")


def read_sysctl(name):
    with open(SYSCTL + name) as f:
        return int(f.read())


@contextlib.contextmanager
def sysctl(name, value):
    """Sets fs.inotify.NAME to value for the with block; always restores the old value."""
    old = read_sysctl(name)
    try:
        try:
            with open(SYSCTL + name, "w") as f:
                f.write(str(value))
        except OSError as exc:
            pytest.skip("cannot write fs.inotify.%s: %s" % (name, exc))
        yield old
    finally:
        with open(SYSCTL + name, "w") as f:
            f.write(str(old))


def watches_of_uid(uid):
    """The inotify watches held by processes of uid, from /proc/*/fdinfo (an instance
    shared by several processes counts once per process: an upper bound)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat("/proc/" + pid).st_uid != uid:
                continue
            for fd in os.listdir("/proc/%s/fd" % pid):
                if os.readlink("/proc/%s/fd/%s" % (pid, fd)) != "anon_inode:inotify":
                    continue
                with open("/proc/%s/fdinfo/%s" % (pid, fd)) as f:
                    total += sum(1 for line in f if line.startswith("inotify wd:"))
        except OSError:
            continue
    return total


def start_then_restore(pyhotd, name, value, **kwargs):
    """Starts a daemon with fs.inotify.NAME lowered to value; restored as soon as the
    daemon answers (its watches are in place by then)."""
    with sysctl(name, value):
        d = pyhotd(ready=False, **kwargs)
        wait_for(lambda: ping(d), what="pyhotd to answer")
    d.ready_status = wait_for(lambda: ready(d), what="pyhotd to be ready")
    return d


def ping(d):
    if not d.alive():
        raise AssertionError("pyhotd exited:\n" + d.log())
    try:
        return d.conn.call("ping")
    except OSError:
        d._exec_client = None
        return None


def ready(d):
    st = d.status()
    return st if st["ready"] else None


# ---- IN_Q_OVERFLOW -------------------------------------------------------------------------------

@needs_root
def test_queue_overflow_rescans_and_loses_no_edit(pyhotd):
    n = 80
    modules = {"m%02d.py" % i: COUNTING.format(value=1) for i in range(n)}
    modules.update({"pkg/__init__.py": "", "pkg/inner/__init__.py": "",
                    "pkg/inner/x.py": "X = 1\n", "marker.py": "STAMP = 0\n"})
    # A queue of 16 events: the daemon, stopped, misses most of what follows.
    d = start_then_restore(pyhotd, "max_queued_events", 16, modules=modules)
    sub = d.subscriber()
    assert d.status()["watch"]["rescans"] == 0
    os.kill(d.proc.pid, signal.SIGSTOP)
    try:
        for i in range(n):
            write(d.path("m%02d.py" % i), COUNTING.format(value=2))
        # Directories change meanwhile too: a new one, a renamed one, a deleted one.
        os.makedirs(d.path("fresh/deeper"))
        fresh = write(d.path("fresh/deeper/f.py"), "F = 1\n")
        os.rename(d.path("pkg/inner"), d.path("pkg/renamed"))
        os.makedirs(d.path("gone"))
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
    ev = sub.next_event("rescan")
    assert ev["reason"] == "overflow" and ev["changed"] >= n, ev
    # Every edit arrives: each module runs its new code, once.
    for i in range(n):
        wait_for(lambda: d.module_value("m%02d" % i, "VALUE") == 2, what="m%02d's edit" % i)
    for i in range(n):
        assert d.module_value("m%02d" % i, "LOADS") == 2, i
    marker = write(d.path("marker.py"), "STAMP = 1\n")
    sub.wait_batch(marker)
    batched = {p for e in sub.seen if e["event"] == "batch" for p in e["paths"]}
    assert fresh in batched, sorted(batched)[:5]
    st = d.status()
    assert st["watch"]["rescans"] == 1, st["watch"]
    # The rescan found the new directories and followed the renamed one.
    assert st["watched_dirs"] == 6, st   # root, pkg, pkg/renamed, fresh, fresh/deeper, gone
    renamed = write(d.path("pkg/renamed/x.py"), "X = 2\n")
    sub.wait_batch(renamed)
    deeper = write(d.path("fresh/deeper/g.py"), "G = 1\n")
    sub.wait_batch(deeper)
    os.rmdir(d.path("gone"))
    wait_for(lambda: d.status()["watched_dirs"] == 5, what="the removed directory's watch")


# ---- the watch limit -------------------------------------------------------------------------

@needs_root
def test_watch_limit_fails_only_the_root_that_hits_it(pyhotd, tmp_path):
    small = tmp_path / "small"
    big = tmp_path / "big"
    small.mkdir()
    write(small / "s.py", "VALUE = 1\n")
    for i in range(40):
        (big / ("d%02d" % i)).mkdir(parents=True)
    write(big / "b.py", "B = 1\n")
    # Room for about 10 more watches: the small root (1 directory) fits, the big one (41)
    # does not, whatever order other processes take theirs in meanwhile.
    limit = watches_of_uid(os.geteuid()) + 10
    d = start_then_restore(pyhotd, "max_user_watches", limit, modules={},
                           args=["--watch", str(small), "--watch", str(big), "--no-import"],
                           watch=False)
    st = d.status()
    roots = {r["path"]: r for r in st["roots"]}
    assert roots[str(small)]["state"] == "watching", roots
    assert roots[str(big)]["state"] == "failed", roots
    assert "fs.inotify.max_user_watches" in roots[str(big)]["error"], roots
    assert roots[str(big)]["lost"] is False
    assert "fs.inotify.max_user_watches" in d.log()
    # The failed root gave its watches back: only the small root's directory is watched.
    assert st["watched_dirs"] == 1, st
    sub = d.subscriber()
    path = write(small / "s.py", "VALUE = 2\n")
    batch, _ = sub.wait_batch(path)
    assert batch["paths"] == [path]


@needs_root
def test_watch_limit_hit_at_runtime_is_reported(pyhotd):
    d = pyhotd({"m.py": "VALUE = 1\n"}, roots=2)
    sub = d.subscriber()
    with sysctl("max_user_watches", 1):
        os.makedirs(d.path("newdir", d.roots[1]))
        ev = sub.next_event("watch_error")
    assert ev["root"] == d.roots[1] and "fs.inotify.max_user_watches" in ev["message"], ev
    st = d.status()
    assert {r["path"]: r["state"] for r in st["roots"]} == {d.roots[0]: "watching",
                                                           d.roots[1]: "failed"}, st
    # The other root still works.
    path = d.write("m.py", "VALUE = 2\n")
    sub.wait_batch(path)
    assert d.module_value("m", "VALUE") == 2


# ---- the instance limit --------------------------------------------------------------------------

@needs_root
def test_instance_limit_fails_every_root_and_keeps_serving(pyhotd):
    d = start_then_restore(pyhotd, "max_user_instances", 0, modules={"m.py": "VALUE = 1\n"},
                           roots=2)
    st = d.status()
    assert [r["state"] for r in st["roots"]] == ["failed", "failed"], st
    for r in st["roots"]:
        assert "fs.inotify.max_user_instances" in r["error"], r
    assert "fs.inotify.max_user_instances" in d.log()
    assert st["watched_dirs"] == 0
    # Still a working daemon: exec, reload by name.
    assert d.module_value("m", "VALUE") == 1
    d.write("m.py", "VALUE = 2\n")
    assert d.conn.call("reload", targets=["m"])["batch"]["result"] == "ok"
    assert d.module_value("m", "VALUE") == 2
