"""Watching where inotify is blind: roots on a real FUSE mount (bindfs), polled beside
inotify; the forced poll backend; `poll = DIR`; a mount inside a root; a mount that goes
away. docs/watching.md is the user's version."""

import os
import shutil
import subprocess
import time

import pytest

from conftest import inotify_watch_fields, wait_for, write

BINDFS = shutil.which("bindfs")
FUSERMOUNT = shutil.which("fusermount3") or shutil.which("fusermount")

needs_fuse = pytest.mark.skipif(not os.path.exists("/dev/fuse"),
                                reason="/dev/fuse is missing: no FUSE mounts on this machine")


def is_mounted(path):
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


class Bindfs:
    """bindfs BACKING MOUNT: the mount shows the backing directory; edits of the backing
    directory reach no inotify watch on the mount (the case of NFS, sshfs, Docker
    Desktop's shares)."""

    def __init__(self, base):
        self.backing = os.path.join(base, "backing")
        self.mount = os.path.join(base, "mnt")
        os.makedirs(self.backing, exist_ok=True)
        os.makedirs(self.mount, exist_ok=True)
        self.proc = None

    def up(self):
        assert BINDFS, "bindfs is not installed (make deps installs it)"
        # In the foreground (-f): the test owns the server's process.
        self.proc = subprocess.Popen([BINDFS, "-f", self.backing, self.mount],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: is_mounted(self.mount) or self.proc.poll() is not None,
                 what="the bindfs mount")
        assert is_mounted(self.mount), "bindfs exited with %s" % self.proc.returncode

    def kill_server(self):
        """The FUSE server dies; the mount stays, answering ENOTCONN."""
        self.proc.kill()
        self.proc.wait(10)

    def down(self):
        if self.proc is None:
            return
        for _ in range(50):
            if not is_mounted(self.mount):
                break
            if subprocess.run([FUSERMOUNT, "-u", self.mount], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run([FUSERMOUNT, "-u", "-z", self.mount], capture_output=True)
        wait_for(lambda: not is_mounted(self.mount), what="the unmount")
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@pytest.fixture
def bindfs(tmp_path):
    """Factory of bindfs mounts under tmp_path; every mount is unmounted at teardown, also
    when the test fails. Request it before pyhotd, so the daemons stop first."""
    mounts = []

    def make(name="fuse"):
        m = Bindfs(str(tmp_path / name))
        m.up()
        mounts.append(m)
        return m

    yield make
    for m in reversed(mounts):
        m.down()


def inotify_watch_devices(pid):
    """The devices (os.stat's st_dev) of the inodes of every inotify watch pid holds (sdev
    is the kernel's encoding, major << 20 | minor)."""
    devices = set()
    for fields in inotify_watch_fields(pid):
        sdev = int(fields["sdev"], 16)
        devices.add(os.makedev(sdev >> 20, sdev & 0xfffff))
    return devices


def root_status(d, path):
    return next(r for r in d.status()["roots"] if r["path"] == path)


def reloads_of(events, path):
    return [e for e in events if e["event"] == "reload" and e["path"] == path]


def config(roots, socket="{socket}", extra=""):
    lines = ["[daemon]", "socket = %s" % socket, "[watch]"]
    lines += ["root = %s" % r for r in roots]
    return "\n".join(lines) + "\n" + extra


@needs_fuse
def test_fuse_root_is_polled_beside_inotify(bindfs, pyhotd):
    fuse = bindfs()
    write(os.path.join(fuse.backing, "remote.py"), "VALUE = 1\n")
    d = pyhotd({"local.py": "VALUE = 1\n"}, args=["--watch", fuse.mount])
    mnt = root_status(d, fuse.mount)
    assert mnt["watched_by"] == "inotify+poll", mnt
    assert "fuse" in mnt["why"], mnt
    local = root_status(d, d.root)
    assert (local["watched_by"], local["polled"]) == ("inotify", []), local
    assert "local" in local["why"], local
    assert "inotify+poll (fuse file system)" in d.log()
    sub = d.subscriber()
    remote = os.path.join(fuse.mount, "remote.py")

    # Edited behind the mount's back: no inotify event exists for it; the poll finds it.
    write(os.path.join(fuse.backing, "remote.py"), "VALUE = 2\n")
    batch, reloads = sub.wait_batch(remote)
    assert [(r["module"], r["result"]) for r in reloads] == [("remote", "ok")], reloads
    assert d.module_value("remote", "VALUE") == 2

    # Edited through the mount: inotify and the poll both see it; one reload.
    write(remote, "VALUE = 3\n")
    batch, reloads = sub.wait_batch(remote)
    assert [(r["module"], r["result"]) for r in reloads] == [("remote", "ok")], reloads
    late = sub.quiet(2.0)  # several poll intervals and directory cycles
    assert reloads_of(late, remote) == [], late
    assert d.module_value("remote", "VALUE") == 3

    # A new file behind the mount's back is found by the directory cycle.
    added = write(os.path.join(fuse.backing, "added.py"), "A = 1\n")
    sub.wait_batch(os.path.join(fuse.mount, os.path.basename(added)))

    # The local root in the same daemon: inotify alone.
    target = write(d.path("local.py"), "VALUE = 2\n")
    batch, reloads = sub.wait_batch(target)
    assert [(r["module"], r["result"]) for r in reloads] == [("local", "ok")], reloads
    assert d.module_value("local", "VALUE") == 2


@needs_fuse
def test_local_root_stays_event_driven(bindfs, pyhotd, tmp_path):
    # With a poll interval of a minute, only inotify can deliver these edits in time: the
    # local root's, and the FUSE root's made through the mount.
    fuse = bindfs()
    write(os.path.join(fuse.backing, "remote.py"), "VALUE = 1\n")
    d = pyhotd({"local.py": "VALUE = 1\n"},
               config=config(["{root}", fuse.mount], extra="poll_interval_ms = 60000\n"))
    assert d.status()["watch"]["poll"]["interval_ms"] == 60000
    sub = d.subscriber()
    for round in range(2, 5):
        local = write(d.path("local.py"), "VALUE = %d\n" % round)
        _, reloads = sub.wait_batch(local)
        assert [r["result"] for r in reloads] == ["ok"], reloads
        remote = write(os.path.join(fuse.mount, "remote.py"), "VALUE = %d\n" % round)
        _, reloads = sub.wait_batch(remote)
        assert [r["result"] for r in reloads] == ["ok"], reloads
    assert d.module_value("local", "VALUE") == 4
    assert d.module_value("remote", "VALUE") == 4


@needs_fuse
def test_pyhotctl_status_says_how_each_root_is_watched(bindfs, pyhotd, pyhotctl):
    fuse = bindfs()
    d = pyhotd({"local.py": "X = 1\n"}, args=["--watch", fuse.mount])
    r = pyhotctl("status", socket=d.socket)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(d.root in line and "(watching, inotify: local " in line for line in lines), lines
    assert any(fuse.mount in line and "(watching, inotify+poll: fuse file system)" in line
               for line in lines), lines


@needs_fuse
def test_fuse_mount_inside_a_root(bindfs, pyhotd, pyhotctl):
    fuse_holder = []

    def prepare(root):
        # The mount point lies inside the (local) root: mounted before the daemon starts.
        m = bindfs("inner")
        fuse_holder.append(m)
        os.makedirs(os.path.join(root, "shared"))
        write(os.path.join(m.backing, "__init__.py"), "")
        write(os.path.join(m.backing, "conf.py"), "VALUE = 1\n")
        m.down()
        m.mount = os.path.join(root, "shared")
        m.up()

    d = pyhotd({"app.py": "X = 1\n"}, prepare=prepare)
    fuse = fuse_holder[0]
    root = root_status(d, d.root)
    assert root["watched_by"] == "inotify", root
    assert [p["path"] for p in root["polled"]] == [fuse.mount], root
    assert "fuse" in root["polled"][0]["why"], root
    out = pyhotctl("status", socket=d.socket).stdout
    assert "  polled: %s (fuse file system mounted there)" % fuse.mount in out, out
    d.exec("import shared.conf")
    sub = d.subscriber()
    write(os.path.join(fuse.backing, "conf.py"), "VALUE = 2\n")
    _, reloads = sub.wait_batch(os.path.join(fuse.mount, "conf.py"))
    assert [(r["module"], r["result"]) for r in reloads] == [("shared.conf", "ok")], reloads


@needs_fuse
def test_unmounted_root_is_reported_and_others_keep_working(bindfs, pyhotd):
    fuse = bindfs()
    write(os.path.join(fuse.backing, "remote.py"), "VALUE = 1\n")
    d = pyhotd({"local.py": "VALUE = 1\n"}, args=["--watch", fuse.mount])
    sub = d.subscriber()
    fuse.down()
    error = sub.next_event(lambda e: e["event"] == "watch_error" and e["root"] == fuse.mount
                           and "cannot poll" in e["message"])
    assert "unmounted" in error["message"], error
    state = root_status(d, fuse.mount)
    assert state["state"] != "watching", state
    # The other root keeps working.
    local = write(d.path("local.py"), "VALUE = 2\n")
    _, reloads = sub.wait_batch(local)
    assert [r["result"] for r in reloads] == ["ok"], reloads
    # Mounted again: said so, and edits behind its back are found again.
    fuse.up()
    sub.next_event(lambda e: e["event"] == "watch_restored" and e["root"] == fuse.mount)
    wait_for(lambda: root_status(d, fuse.mount)["state"] == "watching", what="watching again")
    write(os.path.join(fuse.backing, "remote.py"), "VALUE = 5\n")
    wait_for(lambda: d.module_value("remote", "VALUE") == 5, what="the remote edit reloaded")


def test_forced_poll_backend(pyhotd):
    d = pyhotd({"pkg/__init__.py": "", "pkg/mod.py": "VALUE = 1\n"},
               config=config(["{root}"], extra="backend = poll\npoll_interval_ms = 50\n"))
    st = d.status()
    root = root_status(d, d.root)
    assert (root["watched_by"], root["why"]) == ("poll", "backend = poll"), root
    assert st["watch"]["backend"] == "poll"
    assert st["watch"]["poll"]["dirs"] == 2
    wait_for(lambda: d.status()["watch"]["poll"]["loaded_files"] == 2,
             what="the loaded modules' files known to the poll")
    sub = d.subscriber()

    mod = write(d.path("pkg/mod.py"), "VALUE = 2\n")
    _, reloads = sub.wait_batch(mod)
    assert [(r["module"], r["result"]) for r in reloads] == [("pkg.mod", "ok")], reloads
    assert reloads_of(sub.quiet(1.0), mod) == []
    assert d.module_value("pkg.mod", "VALUE") == 2

    # A new directory and a file in it.
    os.mkdir(d.path("pkg/sub"))
    new = write(d.path("pkg/sub/new.py"), "N = 1\n")
    _, reloads = sub.wait_batch(new)
    assert [(r["module"], r["result"], r["reason"]) for r in reloads] == \
        [(None, "skipped", "not imported")], reloads

    # Paused: changes wait, then go as one batch.
    d.conn.call("pause")
    write(d.path("pkg/mod.py"), "VALUE = 3\n")
    assert reloads_of(sub.quiet(0.5), mod) == []
    d.conn.call("resume")
    _, reloads = sub.wait_batch(mod)
    assert [r["result"] for r in reloads] == ["ok"], reloads

    # Deleted: reported, the module stays loaded.
    os.unlink(mod)
    _, reloads = sub.wait_batch(mod)
    assert reloads[0]["result"] == "skipped" and "deleted" in reloads[0]["reason"], reloads

    # Unwatched: no longer polled, nothing reported.
    d.conn.call("unwatch", path=d.root)
    wait_for(lambda: d.status()["watch"]["poll"]["dirs"] == 0, what="the poll to let go")
    write(d.path("pkg/sub/new.py"), "N = 2\n")
    assert [e for e in sub.quiet(0.5) if e["event"] in ("reload", "batch")] == []


def test_poll_dir_override(pyhotd, tmp_path):
    d = pyhotd({"m.py": "X = 1\n"},
               config=config(["{root}"], extra="poll = {root}\npoll_interval_ms = 50\n"))
    root = root_status(d, d.root)
    assert root["watched_by"] == "inotify+poll", root
    assert root["why"] == "poll = %s" % d.root, root
    sub = d.subscriber()
    for value in (2, 3):
        mod = write(d.path("m.py"), "X = %d\n" % value)
        _, reloads = sub.wait_batch(mod)
        assert [r["result"] for r in reloads] == ["ok"], reloads
        assert reloads_of(sub.quiet(0.6), mod) == []  # not again from the poll


def test_bad_poll_settings_are_config_errors(tmp_path):
    from conftest import PYHOTD, run
    cfg = tmp_path / "c.conf"
    cfg.write_text("[watch]\nbackend = pol\n")
    r = run([PYHOTD, "--config", str(cfg), "--check-config"])
    assert r.returncode == 2 and "expected inotify, uv or poll" in r.stderr, r.stderr
    cfg.write_text("[watch]\npoll_interval_ms = 5\n")
    r = run([PYHOTD, "--config", str(cfg), "--check-config"])
    assert r.returncode == 2 and "poll_interval_ms" in r.stderr, r.stderr


@needs_fuse
def test_dead_fuse_server_is_reported(bindfs, pyhotd):
    fuse = bindfs()
    write(os.path.join(fuse.backing, "remote.py"), "VALUE = 1\n")
    d = pyhotd({"local.py": "VALUE = 1\n"}, args=["--watch", fuse.mount])
    sub = d.subscriber()
    fuse.kill_server()
    error = sub.next_event(lambda e: e["event"] == "watch_error" and e["root"] == fuse.mount
                           and "cannot poll" in e["message"])
    assert "does not answer" in error["message"], error
    assert root_status(d, fuse.mount)["state"] != "watching"
    local = write(d.path("local.py"), "VALUE = 2\n")
    _, reloads = sub.wait_batch(local)
    assert [r["result"] for r in reloads] == ["ok"], reloads
    assert d.alive()


@needs_fuse
def test_inner_mount_unmounted_and_mounted_again(bindfs, pyhotd):
    holder = []

    def prepare(root):
        m = bindfs("inner")
        holder.append(m)
        os.makedirs(os.path.join(root, "shared"))
        write(os.path.join(m.backing, "conf.py"), "VALUE = 1\n")
        m.down()
        m.mount = os.path.join(root, "shared")
        m.up()

    d = pyhotd({"app.py": "X = 1\n"}, prepare=prepare,
               config=config(["{root}"], extra="poll_interval_ms = 100\n"))
    fuse = holder[0]
    assert os.stat(fuse.mount).st_dev in inotify_watch_devices(d.proc.pid)
    sub = d.subscriber()
    fuse.down()
    error = sub.next_event(lambda e: e["event"] == "watch_error" and e["root"] == fuse.mount)
    assert "unmounted" in error["message"], error
    root = root_status(d, d.root)
    assert root["state"] == "watching" and "unmounted" in root["polled"][0]["error"], root

    fuse.up()
    sub.next_event(lambda e: e["event"] == "watch_restored" and e["root"] == fuse.mount)
    assert "error" not in root_status(d, d.root)["polled"][0]
    # inotify watches the new mount again, not the directory it covers.
    wait_for(lambda: os.stat(fuse.mount).st_dev in inotify_watch_devices(d.proc.pid),
             what="inotify watches on the mount again")
    d.exec("import shared.conf")
    conf = write(os.path.join(fuse.mount, "conf.py"), "VALUE = 2\n")
    _, reloads = sub.wait_batch(conf)
    assert [(r["module"], r["result"]) for r in reloads] == [("shared.conf", "ok")], reloads
