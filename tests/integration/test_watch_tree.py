"""The watched tree: directories renamed, moved out, roots deleted and recreated, symlinks
and their loops, include/exclude and the default ignores, pause/resume, and batches held
while git holds its index lock.

Where a test says which directories are watched it reads the daemon's own inotify watches
from /proc/PID/fdinfo (the kernel's list: watch descriptor and inode), not only status.
"""

import os
import shutil
import subprocess
import time

import pytest

from conftest import inotify_watch_fields, wait_for, write

# These tests count how often a module's top level runs (a reload each): whole-module
# reloads. test_reload_definitions.py covers the default, definition-level mode.
pytestmark = pytest.mark.reload_mode("module")

COUNTING = "try:\n    LOADS += 1\nexcept NameError:\n    LOADS = 1\nVALUE = {value}\n"

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
           "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent"}


def git(root, *args):
    env = dict(os.environ, **GIT_ENV)
    return subprocess.run(["git", "-C", root] + list(args), check=True, capture_output=True,
                          text=True, env=env)


def inotify_watches(pid):
    """{wd: inode} of every inotify watch the process holds."""
    return {int(f["wd"]): int(f["ino"], 16) for f in inotify_watch_fields(pid)}


def config(extra=""):
    return "[daemon]\nsocket = {socket}\n[watch]\nroot = {root}\n" + extra


def marker_batch(d, sub, name="marker.py"):
    """Writes a marker file and waits for its batch (everything before it is handled)."""
    path = d.write(name, "STAMP = %r\n" % time.monotonic())
    return sub.wait_batch(path)


# ---- renamed and moved directories -----------------------------------------------------------

def test_renamed_directory_keeps_its_watches(pyhotd):
    d = pyhotd({"a/__init__.py": "", "a/sub/__init__.py": "", "a/sub/deep/__init__.py": "",
                "a/sub/deep/leaf.py": "X = 1\n", "m.py": "X = 1\n"})
    assert d.status()["watched_dirs"] == 4
    before = inotify_watches(d.proc.pid)
    inodes = {os.stat(d.path(p)).st_ino for p in ("", "a", "a/sub", "a/sub/deep")}
    assert inodes <= set(before.values()), (inodes, before)
    sub = d.subscriber()

    os.rename(d.path("a"), d.path("b"))
    # A write in the renamed subtree is reported under its new path...
    leaf = write(d.path("b/sub/deep/leaf.py"), "X = 2\n")
    batch, reloads = sub.wait_batch(leaf)
    assert batch["paths"] == [leaf], batch
    # ...by the same watches: no watch was dropped or added for the rename.
    assert inotify_watches(d.proc.pid) == before
    assert d.status()["watched_dirs"] == 4
    # A directory created inside it afterwards is watched under the new path too.
    os.mkdir(d.path("b/sub/deep/new"))
    newer = write(d.path("b/sub/deep/new/n.py"), "N = 1\n")
    sub.wait_batch(newer)
    wait_for(lambda: d.status()["watched_dirs"] == 5, what="the new directory's watch")
    # Renamed twice, and across levels.
    os.rename(d.path("b/sub"), d.path("moved_sub"))
    again = write(d.path("moved_sub/deep/new/n.py"), "N = 2\n")
    batch, _ = sub.wait_batch(again)
    assert batch["paths"] == [again], batch
    assert d.status()["watched_dirs"] == 5


def test_directory_moved_out_loses_its_watches(pyhotd, tmp_path):
    d = pyhotd({"pkg/__init__.py": "", "pkg/inner/__init__.py": "", "pkg/inner/x.py": "X = 1\n",
                "marker.py": "STAMP = 0\n"})
    assert d.status()["watched_dirs"] == 3
    pkg_inodes = {os.stat(d.path(p)).st_ino for p in ("pkg", "pkg/inner")}
    sub = d.subscriber()
    outside = str(tmp_path / "outside")
    os.rename(d.path("pkg"), outside)
    wait_for(lambda: d.status()["watched_dirs"] == 1, what="the moved-out watches to go")
    assert not pkg_inodes & set(inotify_watches(d.proc.pid).values())
    # Edits there are not ours any more.
    write(os.path.join(outside, "inner", "x.py"), "X = 2\n")
    _, _ = marker_batch(d, sub)
    batched = {p for e in sub.seen if e["event"] == "batch" for p in e["paths"]}
    assert not any(p.startswith(outside) for p in batched), batched


def test_directory_renamed_to_an_ignored_name_is_dropped(pyhotd):
    d = pyhotd({"pkg/__init__.py": "", "pkg/x.py": "X = 1\n", "marker.py": "STAMP = 0\n"})
    assert d.status()["watched_dirs"] == 2
    sub = d.subscriber()
    os.rename(d.path("pkg"), d.path("node_modules"))
    wait_for(lambda: d.status()["watched_dirs"] == 1, what="the ignored directory's watch to go")
    write(d.path("node_modules/x.py"), "X = 2\n")
    marker_batch(d, sub)
    batched = {p for e in sub.seen if e["event"] == "batch" for p in e["paths"]}
    assert d.path("node_modules/x.py") not in batched
    # And back: watched again, its files reported.
    os.rename(d.path("node_modules"), d.path("pkg"))
    sub.wait_batch(d.path("pkg/x.py"))
    wait_for(lambda: d.status()["watched_dirs"] == 2, what="pkg watched again")


# ---- roots deleted, moved, recreated ---------------------------------------------------------

def test_deleted_root_is_watched_again_when_recreated(pyhotd):
    d = pyhotd({"m.py": "VALUE = 1\n"}, roots=2)
    sub = d.subscriber()
    second = d.roots[1]
    write(os.path.join(second, "other.py"), "VALUE = 'o1'\n")
    os.makedirs(os.path.join(second, "pkg"))
    shutil.rmtree(second)
    ev = sub.next_event("watch_error")
    assert ev["root"] == second and ev["lost"] is True and "deleted" in ev["message"], ev
    st = d.status()
    root = [r for r in st["roots"] if r["path"] == second][0]
    assert root["state"] == "failed" and root["lost"] is True and "deleted" in root["error"], root

    # Recreated (and written at once): watched again, its files reported.
    os.mkdir(second)
    path = write(os.path.join(second, "other.py"), "VALUE = 'o2'\n")
    restored = sub.next_event("watch_restored")
    assert restored["root"] == second, restored
    sub.wait_batch(path)
    st = d.status()
    assert {r["path"]: r["state"] for r in st["roots"]} == {d.roots[0]: "watching",
                                                           second: "watching"}, st
    d.exec("import other")
    write(os.path.join(second, "other.py"), "VALUE = 'o3'\n")
    sub.wait_batch(path)
    assert d.module_value("other", "VALUE") == "o3"


def test_root_and_its_parent_deleted_then_recreated(pyhotd, tmp_path):
    """The root's parent goes too: the daemon waits on the nearest existing ancestor and
    follows the path down again as it is recreated (mkdir -p)."""
    deep = tmp_path / "x" / "y" / "root"
    deep.mkdir(parents=True)
    write(deep / "a.py", "A = 1\n")
    d = pyhotd({"m.py": "VALUE = 1\n"}, args=["--watch", str(deep)], watch=False)
    sub = d.subscriber()
    shutil.rmtree(str(tmp_path / "x"))
    ev = sub.next_event("watch_error")
    assert ev["root"] == str(deep), ev
    os.makedirs(str(deep))
    path = write(deep / "a.py", "A = 2\n")
    assert sub.next_event("watch_restored")["root"] == str(deep)
    sub.wait_batch(path)


def test_root_moved_away_then_replaced(pyhotd):
    d = pyhotd({"m.py": "VALUE = 1\n"}, roots=2)
    sub = d.subscriber()
    second = d.roots[1]
    os.rename(second, second + ".old")
    ev = sub.next_event("watch_error")
    assert ev["root"] == second and "moved away" in ev["message"], ev
    # Writes in the moved directory are not reported under the old path.
    write(os.path.join(second + ".old", "x.py"), "X = 1\n")
    os.mkdir(second)
    assert sub.next_event("watch_restored")["root"] == second
    path = write(os.path.join(second, "y.py"), "Y = 1\n")
    batch, _ = sub.wait_batch(path)
    batched = {p for e in sub.seen if e["event"] == "batch" for p in e["paths"]}
    assert not any(p.startswith(second + ".old") for p in batched), batched


# ---- symlinks ------------------------------------------------------------------------------------

def make_links(root, outside):
    """A loop to the parent, a link to the root itself, a self-referencing link, and a link
    to a directory outside the tree."""
    os.makedirs(os.path.join(root, "a", "b"))
    write(os.path.join(root, "a", "b", "m2.py"), "X = 1\n")
    os.symlink("..", os.path.join(root, "a", "b", "up"))
    os.symlink(root, os.path.join(root, "a", "top"))
    os.symlink("self", os.path.join(root, "self"))
    os.makedirs(outside)
    write(os.path.join(outside, "ext.py"), "E = 1\n")
    os.symlink(outside, os.path.join(root, "ext"))


@pytest.mark.parametrize("follow", [False, True])
def test_symlink_loops_never_hang(pyhotd, tmp_path, follow):
    outside = str(tmp_path / "outside")
    d = pyhotd({"m.py": "VALUE = 1\n"}, prepare=lambda root: make_links(root, outside),
               config=config("follow_symlinks = %s\n" % ("yes" if follow else "no")),
               args=["--no-import"])
    st = d.status()
    assert st["watch"]["follow_symlinks"] is follow
    # root, a, a/b (+ the outside directory when links are followed): each once.
    assert st["watched_dirs"] == (4 if follow else 3), st
    sub = d.subscriber()
    # Reported through the link; the engine resolves paths (batch paths are real paths).
    ext = os.path.realpath(os.path.join(d.root, "ext", "ext.py"))
    write(os.path.join(outside, "ext.py"), "E = 2\n")
    if follow:
        batch, _ = sub.wait_batch(ext)
        assert batch["paths"] == [ext], batch
    # A loop made while running: still answering, still one watch per directory.
    os.symlink("../..", os.path.join(d.root, "a", "b", "loop2"))
    marker_batch(d, sub)
    assert d.status()["watched_dirs"] == (4 if follow else 3)
    batched = {p for e in sub.seen if e["event"] == "batch" for p in e["paths"]}
    assert (ext in batched) is follow, batched


# ---- include, exclude, default ignores ----------------------------------------------------------

def test_default_ignored_directories_never_get_a_watch(pyhotd):
    modules = {"m.py": "VALUE = 1\n", "pkg/__init__.py": ""}
    for ignored in (".git/objects/ab", ".venv/lib/site", "node_modules/x/y", "__pycache__",
                    "pkg/__pycache__", ".tox/py", ".mypy_cache/3.11"):
        modules[ignored + "/f.py"] = "X = 1\n"
    d = pyhotd(modules, args=["--no-import"])
    st = d.status()
    assert st["watched_dirs"] == 2, st
    watched = set(inotify_watches(d.proc.pid).values())
    assert watched <= {os.stat(d.root).st_ino, os.stat(d.path("pkg")).st_ino,
                       os.stat(d.path(".git")).st_ino}, watched   # .git: for index.lock only
    for ignored in (".git/objects", ".venv", "node_modules", "__pycache__", "pkg/__pycache__"):
        assert os.stat(d.path(ignored)).st_ino not in watched, ignored
    sub = d.subscriber()
    write(d.path(".venv/lib/site/f.py"), "X = 2\n")
    write(d.path("node_modules/x/y/f.py"), "X = 2\n")
    write(d.path("__pycache__/f.py"), "X = 2\n")
    os.makedirs(d.path("node_modules/new"))
    batch, _ = marker_batch(d, sub)
    batched = {p for e in sub.seen if e["event"] == "batch" for p in e["paths"]}
    assert batched == {d.path("marker.py")}, batched
    assert d.status()["watched_dirs"] == 2


def test_include_and_exclude_globs(pyhotd):
    cfg = config("include = *.py, conf/*.toml\nexclude = *_pb2.py, build, vendor/*\n")
    d = pyhotd({"m.py": "VALUE = 1\n", "conf/app.toml": "a = 1\n", "x_pb2.py": "X = 1\n",
                "build/gen.py": "G = 1\n", "vendor/lib/v.py": "V = 1\n", "notes.txt": "n\n"},
               config=cfg, args=["--no-import"])
    # build and vendor are excluded directories: no watch at all.
    assert d.status()["watched_dirs"] == 2, d.status()
    sub = d.subscriber()
    toml = write(d.path("conf/app.toml"), "a = 2\n")
    write(d.path("x_pb2.py"), "X = 2\n")
    write(d.path("notes.txt"), "m\n")
    write(d.path("build/gen.py"), "G = 2\n")
    write(d.path("vendor/lib/v.py"), "V = 2\n")
    batch, reloads = sub.wait_batch(toml)
    batch, _ = marker_batch(d, sub)
    batched = {p for e in sub.seen if e["event"] == "batch" for p in e["paths"]}
    assert batched == {toml, d.path("marker.py")}, batched


# ---- pause / resume ---------------------------------------------------------------------------

def test_pause_and_resume(pyhotd):
    d = pyhotd({"a.py": COUNTING.format(value=1), "b.py": COUNTING.format(value=1),
                "c.py": COUNTING.format(value=1)})
    sub = d.subscriber()
    result = d.conn.call("pause")
    assert result == {"paused": True, "pending": 0}
    assert sub.next_event("watch_held")["reason"] == "pause"
    paths = [d.write(n, COUNTING.format(value=2)) for n in ("a.py", "b.py", "c.py")]
    d.write("a.py", COUNTING.format(value=3))
    quiet = [e for e in sub.quiet() if e["event"] in ("batch", "reload")]
    assert quiet == [], quiet
    st = d.status()
    assert st["watch"]["paused"] is True and st["watch"]["pending"] == 3, st["watch"]
    assert "pause" in st["watch"]["held"]
    assert d.module_value("a", "VALUE") == 1

    result = d.conn.call("resume")
    assert result == {"paused": False, "pending": 3}, result
    batch, reloads = sub.wait_batch(paths[0])
    assert sorted(batch["paths"]) == sorted(paths), batch
    assert sorted(batch["modules"]) == ["a", "b", "c"], batch
    assert d.module_value("a", "VALUE") == 3 and d.module_value("a", "LOADS") == 2
    assert d.status()["watch"]["paused"] is False
    # Pausing twice, resuming twice: harmless.
    d.conn.call("pause")
    d.conn.call("pause")
    assert d.conn.call("resume")["paused"] is False
    assert d.conn.call("resume")["paused"] is False


# ---- git's index.lock --------------------------------------------------------------------------

def test_batches_wait_for_the_git_index_lock(pyhotd):
    d = pyhotd({"a.py": COUNTING.format(value=1), "b.py": COUNTING.format(value=1)},
               prepare=lambda root: git(root, "init", "-q"))
    sub = d.subscriber()
    lock = d.path(".git/index.lock")
    with open(lock, "w"):
        pass
    held = sub.next_event("watch_held")
    assert held["reason"] == "vcs" and held["lock"] == lock, held
    a = d.write("a.py", COUNTING.format(value=2))
    time.sleep(0.05)
    b = d.write("b.py", COUNTING.format(value=2))
    quiet = [e for e in sub.quiet() if e["event"] in ("batch", "reload")]
    assert quiet == [], quiet
    st = d.status()["watch"]
    assert st["vcs_lock"] == lock and "vcs" in st["held"] and st["pending"] == 2, st
    # git renames the lock over the index when it is done.
    os.rename(lock, d.path(".git/index"))
    released = sub.next_event("watch_released")
    assert released["reason"] == "vcs" and released["pending"] == 2, released
    batch, _ = sub.wait_batch(a)
    assert sorted(batch["paths"]) == sorted([a, b]), batch
    assert d.module_value("b", "VALUE") == 2


def test_a_stale_git_lock_holds_only_defer_vcs_ms(pyhotd):
    d = pyhotd({"a.py": COUNTING.format(value=1)}, config=config("defer_vcs_ms = 300\n"),
               prepare=lambda root: (git(root, "init", "-q"),
                                     open(os.path.join(root, ".git", "index.lock"), "w").close()))
    st = d.status()["watch"]
    sub = d.subscriber()
    a = d.write("a.py", COUNTING.format(value=2))
    batch, _ = sub.wait_batch(a)   # after about 300 ms, not never
    released = [e for e in sub.seen if e["event"] == "watch_released"]
    assert released and released[0]["reason"] == "vcs_timeout", sub.seen
    assert st["defer_vcs_ms"] == 300
    assert "stale" in d.log()
    # While the stale lock stays, batches flow normally.
    a = d.write("a.py", COUNTING.format(value=3))
    sub.wait_batch(a)
    assert d.module_value("a", "VALUE") == 3


def test_git_lock_in_a_worktree_and_above_the_root(pyhotd, tmp_path):
    """The root is a subdirectory of a git worktree: its lock lives in the main repository's
    .git/worktrees/NAME, which a .git *file* names."""
    main = tmp_path / "main"
    main.mkdir()
    git(str(main), "init", "-q", "-b", "main")
    write(main / "README", "x\n")
    git(str(main), "add", "-A")
    git(str(main), "commit", "-q", "-m", "init")
    wt = tmp_path / "wt"
    git(str(main), "worktree", "add", "-q", "-b", "other", str(wt))
    src = wt / "src"
    src.mkdir()
    write(src / "m.py", "VALUE = 1\n")
    d = pyhotd({}, args=["--watch", str(src)], watch=False)
    sub = d.subscriber()
    gitdir = os.path.realpath(str(main / ".git" / "worktrees" / "wt"))
    lock = os.path.join(gitdir, "index.lock")
    open(lock, "w").close()
    assert sub.next_event("watch_held")["lock"] == lock
    path = write(src / "m.py", "VALUE = 2\n")
    assert [e for e in sub.quiet() if e["event"] == "batch"] == []
    os.unlink(lock)
    batch, _ = sub.wait_batch(path)
    assert d.module_value("m", "VALUE") == 2


DEP_TEMPLATE = """\
{imports}
try:
    LOADS += 1
except NameError:
    LOADS = 1
VALUE = {value}
DEPS = [{deps}]
"""


def dep_module(i, value):
    """m{i} imports m{(i-1)//2} (a binary tree of imports, depth 9 for 500 modules)."""
    if i == 0:
        return DEP_TEMPLATE.format(imports="", value=value, deps="")
    parent = (i - 1) // 2
    return DEP_TEMPLATE.format(imports="import m%03d" % parent, value=value,
                               deps="m%03d.VALUE" % parent)


def test_git_checkout_of_500_files_reloads_once_in_dependency_order(pyhotd):
    n = 500
    modules = {"m%03d.py" % i: dep_module(i, 1) for i in range(n)}
    modules["marker.py"] = "STAMP = 0\n"

    def prepare(root):
        git(root, "init", "-q", "-b", "main")
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "one")
        git(root, "checkout", "-q", "-b", "two")
        for i in range(n):
            write(os.path.join(root, "m%03d.py" % i), dep_module(i, 2))
        git(root, "commit", "-q", "-am", "two")
        git(root, "checkout", "-q", "main")

    d = pyhotd(modules, prepare=prepare)
    sub = d.subscriber()
    assert d.module_value("m499", "VALUE") == 1
    git(d.root, "checkout", "-q", "two")
    paths = {d.path("m%03d.py" % i) for i in range(n)}
    batch = sub.next_event(lambda e: e["event"] == "batch" and paths & set(e["paths"]))
    assert paths <= set(batch["paths"]), len(paths - set(batch["paths"]))
    assert batch["result"] == "ok", batch
    order = batch["modules"]
    assert sorted(order) == sorted("m%03d" % i for i in range(n))
    position = {name: k for k, name in enumerate(order)}
    for i in range(1, n):
        assert position["m%03d" % ((i - 1) // 2)] < position["m%03d" % i], i
    held = [e for e in sub.seen if e["event"] == "watch_held"]
    assert held and held[0]["reason"] == "vcs", held
    marker_batch(d, sub)
    batches = [e for e in sub.seen if e["event"] == "batch" and paths & set(e["paths"])]
    assert len(batches) == 1, [len(b["paths"]) for b in batches]
    for i in (0, 1, 250, 499):
        assert d.module_value("m%03d" % i, "VALUE") == 2
        assert d.module_value("m%03d" % i, "LOADS") == 2
    assert d.eval("m499.DEPS", setup="import m499") == [2]


# ---- the [watch] keys -----------------------------------------------------------------------

def test_watch_config_keys(pyhotd, tmp_path):
    d = pyhotd({"m.py": "VALUE = 1\n"}, config=config(
        "backend = uv\nfollow_symlinks = yes\ndefer_vcs_ms = 1234\n"))
    st = d.status()["watch"]
    assert (st["backend"], st["follow_symlinks"], st["defer_vcs_ms"]) == ("uv", True, 1234), st
    assert st["rescans"] == 0 and st["paused"] is False and st["held"] == [], st

    from conftest import PYHOTD, run
    for line, message in (("backend = kqueue", "expected inotify, uv or poll"),
                          ("follow_symlinks = maybe", "expected yes or no"),
                          ("defer_vcs_ms = -1", "defer_vcs_ms: expected an integer")):
        cfg = tmp_path / "bad.conf"
        cfg.write_text("[watch]\nroot = %s\n%s\n" % (tmp_path, line))
        r = run([PYHOTD, "--config", str(cfg), "--check-config"])
        assert r.returncode == 2, (line, r.stdout, r.stderr)
        assert "%s:3: " % cfg in r.stderr and message in r.stderr, r.stderr


def test_uv_backend_roots_renames_and_git_lock(pyhotd):
    """The uv backend does what the inotify one does for roots, renamed directories and
    git's lock (differently inside: it re-watches a renamed directory)."""
    d = pyhotd({"m.py": COUNTING.format(value=1), "a/__init__.py": "", "a/sub/x.py": "X = 1\n"},
               roots=2, prepare=lambda root: git(root, "init", "-q"),
               config="[daemon]\nsocket = {socket}\n[watch]\nroot = {root}\nroot = {root}2\n"
                      "backend = uv\n")
    st = d.status()
    assert st["watch"]["backend"] == "uv" and st["watched_dirs"] == 4, st
    sub = d.subscriber()
    # A directory renamed: still watched, under its new name.
    os.rename(d.path("a"), d.path("b"))
    wait_for(lambda: d.status()["watched_dirs"] == 4, what="b watched")
    x = write(d.path("b/sub/x.py"), "X = 2\n")
    sub.wait_batch(x)
    # The second root deleted and recreated.
    second = d.roots[1]
    shutil.rmtree(second)
    ev = sub.next_event("watch_error")
    assert ev["root"] == second and ev["lost"] is True, ev
    os.mkdir(second)
    assert sub.next_event("watch_restored")["root"] == second
    y = write(os.path.join(second, "y.py"), "Y = 1\n")
    sub.wait_batch(y)
    # git's lock holds batches.
    lock = d.path(".git/index.lock")
    open(lock, "w").close()
    assert sub.next_event("watch_held")["lock"] == lock
    m = d.write("m.py", COUNTING.format(value=2))
    assert [e for e in sub.quiet() if e["event"] == "batch"] == []
    os.unlink(lock)
    batch, _ = sub.wait_batch(m)
    assert d.module_value("m", "VALUE") == 2 and d.module_value("m", "LOADS") == 2
