"""Every way editors and tools write a file gives exactly one reload with the new content.

Each test runs on both backends: inotify (the default) and uv (`[watch] backend = uv`,
libuv's uv_fs_event). The sequences are the real tools where Debian has them (vim, sed,
cp, touch, git, mv) and faithful replays of their system calls where it does not (VS Code,
Emacs, JetBrains).
"""

import os
import shutil
import subprocess
import time

import pytest

from conftest import QUIET, wait_for, write

# These tests count how often a module's top level runs (a reload each): whole-module
# reloads. test_reload_definitions.py covers the default, definition-level mode.
pytestmark = pytest.mark.reload_mode("module")

COUNTING = "try:\n    LOADS += 1\nexcept NameError:\n    LOADS = 1\nVALUE = {value}\n"

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
           "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent"}


def config_for(backend, extra=""):
    return ("[daemon]\nsocket = {socket}\n[watch]\nroot = {root}\nbackend = %s\n%s"
            % (backend, extra))


@pytest.fixture(params=["inotify", "uv"])
def backend(request):
    return request.param


def start(pyhotd, backend, modules, extra=""):
    d = pyhotd(modules, config=config_for(backend, extra))
    assert d.status()["watch"]["backend"] == backend
    return d


def git(root, *args):
    env = dict(os.environ, **GIT_ENV)
    return subprocess.run(["git", "-C", root] + list(args), check=True, capture_output=True,
                          text=True, env=env)


def settle_marker(d, sub):
    """Writes marker.py and waits for its batch: everything about earlier edits has been
    handled by then (batches go out in order). Returns every event seen so far."""
    marker = d.write("marker.py", "STAMP = %r\n" % time.monotonic())
    sub.events_until(lambda e: e["event"] == "batch" and marker in e["paths"])
    return sub.seen


def assert_reloaded_once(d, sub, module, path, value):
    """The module ran exactly once more (LOADS == 2), with the new VALUE, and only one
    reload event for it says ok."""
    seen = settle_marker(d, sub)
    oks = [e for e in seen if e["event"] == "reload" and e["module"] == module
           and e["result"] == "ok"]
    assert len(oks) == 1, [e for e in seen if e["event"] in ("reload", "batch")]
    assert oks[0]["path"] == path, oks
    others = [e for e in seen if e["event"] == "reload" and e["module"] == module
              and e["result"] not in ("ok", "skipped")]
    assert others == [], others
    assert d.module_value(module, "VALUE") == value
    assert d.module_value(module, "LOADS") == 2


# ---- the editors -------------------------------------------------------------------------

def save_in_place(path, text):
    write(path, text)


def save_truncate_then_write(path, text):
    """VS Code: open the existing file read-write, truncate it, write, close (it keeps the
    inode and the file's attributes)."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def save_vim(path, text, backupcopy):
    """Real vim, 'writebackup' on (its default): with backupcopy=no the original is renamed
    to m.py~ and a new file is written; with backupcopy=yes the original is copied to m.py~
    and overwritten in place."""
    script = path + ".vimscript"
    with open(script, "w") as f:
        f.write("set nocompatible writebackup backupcopy=%s backupdir=. nobackup backupskip=\n" % backupcopy)
        f.write("%d\n")
        f.write("call setline(1, %r)\n" % text.rstrip("\n").split("\n"))
        f.write("wq\n")
    try:
        subprocess.run(["vim", "-u", "NONE", "-i", "NONE", "-N", "-n", "-es", "-S", script, path],
                       check=False, stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
                       env=dict(os.environ, HOME="/nonexistent"))
    finally:
        os.unlink(script)
    with open(path) as f:
        assert f.read() == text


def save_emacs_first(path, text, pause=0.03):
    """Emacs' first save of a session: a lock symlink .#m.py, the original renamed to the
    backup m.py~, the new content written to a new m.py (in two writes, pause seconds
    apart), the lock removed."""
    d, name = os.path.split(path)
    lock = os.path.join(d, ".#" + name)
    os.symlink("user@host.1234:1700000000", lock)
    os.rename(path, path + "~")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    data = text.encode()
    os.write(fd, data[:len(data) // 2])
    time.sleep(pause)  # longer than the settle window: the half-written file must not go
    os.write(fd, data[len(data) // 2:])
    os.close(fd)
    os.unlink(lock)


def save_jetbrains(path, text):
    """JetBrains' safe write: m.py___jb_tmp___ written, m.py renamed to m.py___jb_old___,
    the temporary renamed to m.py, the old one deleted."""
    tmp, old = path + "___jb_tmp___", path + "___jb_old___"
    write(tmp, text)
    os.rename(path, old)
    os.rename(tmp, path)
    os.unlink(old)


def save_sed(path, text):
    with open(path) as f:
        before = f.read()
    old_value = before.rsplit("VALUE = ", 1)[1].strip()
    new_value = text.rsplit("VALUE = ", 1)[1].strip()
    subprocess.run(["sed", "-i", "s/^VALUE = %s$/VALUE = %s/" % (old_value, new_value), path],
                   check=True)


def save_cp(path, text):
    src = path + ".src-outside"
    src = os.path.join(os.path.dirname(os.path.dirname(path)), "cp-source.py")
    write(src, text)
    subprocess.run(["cp", src, path], check=True)


EDITORS = {
    "in_place": save_in_place,
    "truncate_then_write": save_truncate_then_write,
    "vim_rename": lambda p, t: save_vim(p, t, "no"),
    "vim_backupcopy_yes": lambda p, t: save_vim(p, t, "yes"),
    "emacs_first_save": save_emacs_first,
    "jetbrains_safe_write": save_jetbrains,
    "sed_i": save_sed,
    "cp_over": save_cp,
}


@pytest.mark.parametrize("editor", sorted(EDITORS))
def test_editor_save_reloads_once(pyhotd, backend, editor):
    if editor.startswith("vim") and not shutil.which("vim"):
        pytest.skip("vim is not installed")
    d = start(pyhotd, backend, {"m.py": COUNTING.format(value=1), "marker.py": "STAMP = 0\n"})
    sub = d.subscriber()
    path = d.path("m.py")
    inode = os.stat(path).st_ino
    if editor == "emacs_first_save" and backend == "uv":
        # The uv backend has no "closed after writing" event: only the settle window
        # keeps a half-written file out of a batch (docs/watching.md), so no pause here.
        save_emacs_first(path, COUNTING.format(value=2), pause=0)
    else:
        EDITORS[editor](path, COUNTING.format(value=2))
    if editor == "vim_rename" or editor == "jetbrains_safe_write":
        assert os.stat(path).st_ino != inode   # it really replaced the file
    if editor == "vim_backupcopy_yes":
        assert os.stat(path).st_ino == inode   # it really wrote in place
    sub.wait_batch(path)
    assert_reloaded_once(d, sub, "m", path, 2)
    # No backup or temporary file was ever batched.
    batched = {p for e in sub.seen if e["event"] == "batch" for p in e["paths"]}
    assert batched <= {path, d.path("marker.py")}, batched


def test_touch_unchanged_never_reloads(pyhotd, backend):
    d = start(pyhotd, backend, {"m.py": COUNTING.format(value=1), "marker.py": "STAMP = 0\n"})
    sub = d.subscriber()
    path = d.path("m.py")
    subprocess.run(["touch", path], check=True)
    seen = settle_marker(d, sub)
    for e in seen:
        if e["event"] == "reload" and e["path"] == path:
            assert e["result"] == "skipped" and e["reason"] == "content unchanged", e
    assert d.module_value("m", "LOADS") == 1


def test_slow_writer_is_not_batched_half_written(pyhotd):
    """inotify only: a file opened, truncated, and written over 0.2 s in pieces is batched
    once, at its IN_CLOSE_WRITE, never in between (the uv backend cannot tell)."""
    d = start(pyhotd, "inotify", {"m.py": COUNTING.format(value=1), "marker.py": "STAMP = 0\n"})
    sub = d.subscriber()
    path = d.path("m.py")
    text = COUNTING.format(value=2).encode()
    fd = os.open(path, os.O_RDWR)
    os.ftruncate(fd, 0)
    for i in range(0, len(text), 8):
        time.sleep(0.02)
        os.write(fd, text[i:i + 8])
    os.close(fd)
    sub.wait_batch(path)
    assert_reloaded_once(d, sub, "m", path, 2)


def test_git_checkout_many_files_is_one_batch(pyhotd, backend):
    n = 120
    modules = {"mod%03d.py" % i: COUNTING.format(value=1) for i in range(n)}
    modules["marker.py"] = "STAMP = 0\n"
    d = start(pyhotd, backend, modules)
    git(d.root, "init", "-q", "-b", "main")
    git(d.root, "add", "-A")
    git(d.root, "commit", "-q", "-m", "one")
    git(d.root, "checkout", "-q", "-b", "two")
    for i in range(n):
        write(d.path("mod%03d.py" % i), COUNTING.format(value=2))
    git(d.root, "commit", "-q", "-am", "two")
    git(d.root, "checkout", "-q", "main")
    sub = d.subscriber()
    settle_marker(d, sub)                   # everything before this point is handled
    assert d.module_value("mod000", "VALUE") == 1
    start_at = len(sub.seen)
    git(d.root, "checkout", "-q", "two")    # 120 files to VALUE = 2
    paths = {d.path("mod%03d.py" % i) for i in range(n)}
    batch = sub.next_event(lambda e: e["event"] == "batch" and paths & set(e["paths"]))
    assert paths <= set(batch["paths"]), (len(paths - set(batch["paths"])), batch["paths"][:5])
    assert batch["result"] == "ok", batch
    assert sorted(batch["modules"]) == sorted("mod%03d" % i for i in range(n)), batch["modules"]
    settle_marker(d, sub)
    batches = [e for e in sub.seen[start_at:] if e["event"] == "batch" and paths & set(e["paths"])]
    assert len(batches) == 1, batches
    for i in range(n):
        assert d.module_value("mod%03d" % i, "VALUE") == 2


def test_git_stash_pop_is_one_batch(pyhotd, backend):
    n = 60
    modules = {"mod%02d.py" % i: COUNTING.format(value=1) for i in range(n)}
    modules["marker.py"] = "STAMP = 0\n"
    d = start(pyhotd, backend, modules)
    git(d.root, "init", "-q", "-b", "main")
    git(d.root, "add", "-A")
    git(d.root, "commit", "-q", "-m", "one")
    sub = d.subscriber()
    for i in range(n):
        write(d.path("mod%02d.py" % i), COUNTING.format(value=2))
    git(d.root, "stash", "-q")              # back to VALUE = 1 everywhere
    paths = {d.path("mod%02d.py" % i) for i in range(n)}
    settle_marker(d, sub)
    assert d.module_value("mod00", "VALUE") == 1
    start_at = len(sub.seen)
    git(d.root, "stash", "pop", "-q")
    seen = sub.seen[start_at:]
    batch = sub.next_event(lambda e: e["event"] == "batch" and paths & set(e["paths"]))
    assert paths <= set(batch["paths"]), len(paths - set(batch["paths"]))
    assert batch["result"] == "ok", batch
    settle_marker(d, sub)
    seen = sub.seen[start_at:]
    batches = [e for e in seen if e["event"] == "batch" and paths & set(e["paths"])]
    assert len(batches) == 1, batches
    for i in range(n):
        assert d.module_value("mod%02d" % i, "VALUE") == 2


def test_directory_moved_back_into_the_tree_reloads_its_modules(pyhotd, backend, tmp_path):
    d = start(pyhotd, backend, {"pkg/__init__.py": "", "pkg/a.py": COUNTING.format(value=1),
                                "pkg/b.py": COUNTING.format(value=1), "marker.py": "STAMP = 0\n"})
    assert d.module_value("pkg.a", "VALUE") == 1
    sub = d.subscriber()
    away = str(tmp_path / "away")
    os.mkdir(away)
    shutil.move(d.path("pkg"), away)
    wait_for(lambda: d.status()["watched_dirs"] == 1, what="pkg's watch to go")
    write(os.path.join(away, "pkg", "a.py"), COUNTING.format(value=2))
    write(os.path.join(away, "pkg", "b.py"), COUNTING.format(value=2))
    os.rename(os.path.join(away, "pkg"), d.path("pkg"))
    batch, reloads = sub.wait_batch(d.path("pkg/a.py"))
    wait_for(lambda: d.status()["watched_dirs"] == 2, what="pkg to be watched again")
    assert_reloaded_once(d, sub, "pkg.a", d.path("pkg/a.py"), 2)
    assert d.module_value("pkg.b", "VALUE") == 2
    # And it is watched under that path.
    write(d.path("pkg/a.py"), COUNTING.format(value=3))
    sub.wait_batch(d.path("pkg/a.py"))
    assert d.module_value("pkg.a", "VALUE") == 3


def test_quiet_after_many_saves(pyhotd, backend):
    """Ten saves of ten files by as many means: no batch is left behind afterwards."""
    d = start(pyhotd, backend, {"m%d.py" % i: COUNTING.format(value=1) for i in range(10)})
    sub = d.subscriber()
    editors = [save_in_place, save_truncate_then_write, save_jetbrains, save_sed, save_cp]
    for i in range(10):
        editors[i % len(editors)](d.path("m%d.py" % i), COUNTING.format(value=2))
    for i in range(10):
        wait_for(lambda: d.module_value("m%d" % i, "VALUE") == 2, what="m%d reloaded" % i)
    sub.quiet(QUIET)
    for i in range(10):
        oks = [e for e in sub.seen if e["event"] == "reload" and e["module"] == "m%d" % i
               and e["result"] == "ok"]
        assert len(oks) == 1, oks
        assert d.module_value("m%d" % i, "LOADS") == 2, i
