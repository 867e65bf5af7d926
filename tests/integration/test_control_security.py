"""Security of the control socket through the real daemon: the socket directory (ours, no
symlink, private), the socket's mode, socket_group, peers of other uids run as another
user (setpriv), one daemon per socket path, stale sockets, clean removal."""

import json
import os
import shutil
import signal
import socket
import stat
import subprocess

import pytest

from conftest import PYHOTD, TIMEOUT, Client, clean_env, run, wait_for

# These tests count how often a module's top level runs (a reload each): whole-module
# reloads. test_reload_definitions.py covers the default, definition-level mode.
pytestmark = pytest.mark.reload_mode("module")

SETPRIV = shutil.which("setpriv")
GROUP = 4242            # a gid no one has; setpriv can give it to the peer anyway
NOBODY = 65534

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a peer as another uid")
needs_setpriv = pytest.mark.skipif(SETPRIV is None, reason="setpriv (util-linux) is not installed")

PEER = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(json.dumps({"connect_error": e.errno}))
    sys.exit(0)
try:
    s.sendall(b'{"id": 1, "cmd": "exec", "code": "__import__(\'os\').getpid()"}\n')
except OSError:
    pass
data = b""
while True:
    try:
        chunk = s.recv(65536)
    except ConnectionResetError:
        break
    if not chunk or b"\n" in chunk:
        data += chunk
        break
    data += chunk
print(json.dumps({"lines": data.decode().splitlines()}))
"""


def _run_peer(socket_path, *setpriv_args):
    proc = subprocess.run([SETPRIV] + list(setpriv_args) + ["/usr/bin/python3", "-c", PEER,
                                                            socket_path],
                          capture_output=True, text=True, timeout=TIMEOUT, cwd="/")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _group_config(group):
    return ("[daemon]\nsocket = {socket}\nlog_level = debug\nsocket_group = %s\n\n"
            "[watch]\nroot = {root}\n" % group)


# ---- the directory -----------------------------------------------------------------------------

def test_symlinked_socket_directory_is_refused(pyhotd, short_tmp):
    real = os.path.join(short_tmp, "real")
    os.mkdir(real, 0o700)
    link = os.path.join(short_tmp, "link")
    os.symlink(real, link)
    d = pyhotd({"m.py": "X = 1\n"}, socket_path=os.path.join(link, "pyhotd.sock"), ready=False)
    d.expect_clean_exit = False
    assert d.wait_exit() == 1
    assert "symlink" in d.log() and link in d.log(), d.log()
    assert os.listdir(real) == []


def test_socket_directory_that_is_a_file_is_refused(pyhotd, short_tmp):
    path = os.path.join(short_tmp, "file")
    with open(path, "w") as f:
        f.write("x")
    d = pyhotd({"m.py": "X = 1\n"}, socket_path=os.path.join(path, "pyhotd.sock"), ready=False)
    d.expect_clean_exit = False
    assert d.wait_exit() == 1
    assert path in d.log()


def test_socket_and_lock_modes(pyhotd):
    d = pyhotd({"m.py": "X = 1\n"})
    assert stat.S_ISSOCK(os.lstat(d.socket).st_mode)
    assert stat.S_IMODE(os.lstat(d.socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(d.sockdir).st_mode) == 0o700
    lock = d.socket + ".lock"
    assert stat.S_ISREG(os.lstat(lock).st_mode)
    assert stat.S_IMODE(os.lstat(lock).st_mode) == 0o600
    assert sorted(os.listdir(d.sockdir)) == ["pyhotd.sock", "pyhotd.sock.lock"]
    assert d.shutdown() == 0
    assert os.listdir(d.sockdir) == []      # a clean stop removes the socket and the lock


# ---- peers of other users ----------------------------------------------------------------------

@needs_root
@needs_setpriv
def test_peer_of_another_uid_and_group_is_refused(pyhotd, short_tmp):
    d = pyhotd({"m.py": "X = 1\n"})
    # Let the other user reach the socket at all, so that only SO_PEERCRED stands in its way.
    os.chmod(short_tmp, 0o711)
    os.chmod(d.sockdir, 0o711)
    os.chmod(d.socket, 0o666)
    try:
        out = _run_peer(d.socket, "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups")
    finally:
        os.chmod(d.socket, 0o600)
        os.chmod(d.sockdir, 0o700)
        os.chmod(short_tmp, 0o700)
    assert len(out["lines"]) == 1, out
    reply = json.loads(out["lines"][0])
    assert reply["ok"] is False and reply["error"]["code"] == "permission_denied", reply
    st = d.conn.call("stats")["connections"]
    assert st["refused_permission"] == 1
    assert "uid %d" % NOBODY in d.log()


@needs_root
@needs_setpriv
def test_socket_group(pyhotd, short_tmp):
    """With socket_group, the daemon creates the directory 0710 and the socket 0660, both of
    that group, and admits its members (primary or supplementary group); other users are
    still refused."""
    sockdir = os.path.join(short_tmp, "grp")
    path = os.path.join(sockdir, "pyhotd.sock")
    d = pyhotd({"m.py": "X = 1\n"}, config=_group_config(GROUP), socket_path=path)
    st = os.stat(sockdir)
    assert stat.S_IMODE(st.st_mode) == 0o710 and st.st_gid == GROUP
    st = os.lstat(path)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == GROUP
    os.chmod(short_tmp, 0o711)
    try:
        for args in (["--regid=%d" % NOBODY, "--groups=%d" % GROUP],     # supplementary
                     ["--regid=%d" % GROUP, "--clear-groups"]):             # primary
            out = _run_peer(path, "--reuid=%d" % NOBODY, *args)
            reply = json.loads(out["lines"][0])
            assert reply["ok"] is True, (args, reply)
            assert int(reply["result"]["value"]) == d.proc.pid
        # Not in the group: the directory keeps it out...
        out = _run_peer(path, "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups")
        assert out == {"connect_error": 13}, out                     # EACCES
        # ...and so does SO_PEERCRED when the directory and socket are opened up.
        os.chmod(sockdir, 0o711)
        os.chmod(path, 0o666)
        out = _run_peer(path, "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups")
        reply = json.loads(out["lines"][0])
        assert reply["error"]["code"] == "permission_denied", reply
        assert "socket_group" in reply["error"]["message"]
    finally:
        os.chmod(short_tmp, 0o700)
        if os.path.exists(path):
            os.chmod(path, 0o660)
            os.chmod(sockdir, 0o710)


@needs_root
def test_socket_group_directory_rules(pyhotd, short_tmp):
    # An existing directory of the group with group write is refused; 0750 of the group is fine.
    sockdir = os.path.join(short_tmp, "grpw")
    os.mkdir(sockdir)
    os.chown(sockdir, 0, GROUP)
    os.chmod(sockdir, 0o770)
    d = pyhotd({"m.py": "X = 1\n"}, config=_group_config(GROUP),
               socket_path=os.path.join(sockdir, "pyhotd.sock"), ready=False)
    d.expect_clean_exit = False
    assert d.wait_exit() == 1
    assert "0770" in d.log() and sockdir in d.log(), d.log()
    os.chmod(sockdir, 0o750)
    d = pyhotd({"m.py": "X = 1\n"}, config=_group_config(GROUP),
               socket_path=os.path.join(sockdir, "pyhotd.sock"))
    assert d.conn.call("ping")["pong"] is True
    # A directory of another group, open to its group, is refused.
    other = os.path.join(short_tmp, "grpo")
    os.mkdir(other)
    os.chown(other, 0, GROUP + 1)
    os.chmod(other, 0o750)
    d = pyhotd({"m.py": "X = 1\n"}, config=_group_config(GROUP),
               socket_path=os.path.join(other, "pyhotd.sock"), ready=False)
    d.expect_clean_exit = False
    assert d.wait_exit() == 1
    assert other in d.log()


def test_unknown_socket_group_is_a_config_error(tmp_path):
    cfg = tmp_path / "pyhotd.conf"
    cfg.write_text("[daemon]\nsocket_group = no-such-group-pyhot\n")
    r = run([PYHOTD, "--config", str(cfg), "--check-config"])
    assert r.returncode == 2, r
    assert "no-such-group-pyhot" in r.stderr


# ---- one daemon per socket -----------------------------------------------------------------

def test_second_daemon_refuses_even_when_the_socket_file_is_gone(pyhotd):
    first = pyhotd({"m.py": "X = 1\n"})
    keep = first.client()
    os.unlink(first.socket)          # someone removed it: the first daemon still owns the path
    second = pyhotd({"m.py": "X = 1\n"}, socket_path=first.socket, ready=False)
    second.expect_clean_exit = False
    assert second.wait_exit() == 1
    assert "already" in second.log() and ".lock" in second.log(), second.log()
    assert not os.path.exists(first.socket)
    assert keep.request("ping")["result"]["pid"] == first.proc.pid
    first.expect_clean_exit = False   # its socket file is gone: stop it by signal
    assert first.terminate() == 0
    assert not os.path.exists(first.socket + ".lock")


def test_socket_of_a_killed_daemon_is_replaced(pyhotd):
    first = pyhotd({"m.py": "X = 1\n"})
    first.expect_clean_exit = False
    first.proc.send_signal(signal.SIGKILL)
    first.wait_exit()
    assert stat.S_ISSOCK(os.lstat(first.socket).st_mode)      # left behind
    assert os.path.exists(first.socket + ".lock")
    second = pyhotd({"m.py": "X = 1\n"}, socket_path=first.socket)
    with Client(first.socket) as c:
        assert c.request("ping")["result"]["pid"] == second.proc.pid
    assert "stale socket" in second.log()
    assert second.shutdown() == 0
    assert not os.path.exists(first.socket) and not os.path.exists(first.socket + ".lock")


def test_two_daemons_started_at_once_one_wins(pyhotd, short_tmp, tmp_path):
    sockdir = os.path.join(short_tmp, "race")
    os.mkdir(sockdir, 0o700)
    path = os.path.join(sockdir, "pyhotd.sock")
    root = tmp_path / "root"
    root.mkdir()
    procs = [subprocess.Popen([PYHOTD, "--socket", path, "--watch", str(root)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, env=clean_env()) for _ in range(4)]
    try:
        # Exactly one keeps running; the others exit 1 saying another one listens.
        def exited():
            return sum(p.poll() is not None for p in procs) >= 3
        wait_for(exited, what="three of four daemons to give up")
        alive = [p for p in procs if p.poll() is None]
        assert len(alive) == 1
        for p in procs:
            if p is not alive[0]:
                assert p.returncode == 1 and b"already" in p.stderr.read()
        with Client(path) as c:
            assert c.request("ping")["result"]["pid"] == alive[0].pid
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                assert p.wait(TIMEOUT) == 0
    assert os.listdir(sockdir) == []


# ---- the directory when missing or open, one daemon per path, stale files ----------------

def test_missing_socket_directory_is_created_private(pyhotd, short_tmp):
    path = os.path.join(short_tmp, "run", "pyhot", "pyhotd.sock")
    d = pyhotd({"m.py": "X = 1\n"}, socket_path=path)
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert d.conn.call("ping")["pong"] is True
    assert d.shutdown() == 0
    assert not os.path.exists(path)


@pytest.mark.parametrize("mode", [0o755, 0o710, 0o701], ids=["0755", "0710", "0701"])
def test_socket_directory_open_to_others_is_refused(pyhotd, short_tmp, mode):
    base = os.path.join(short_tmp, "open")
    os.mkdir(base)
    os.chmod(base, mode)
    path = os.path.join(base, "pyhotd.sock")
    d = pyhotd({"m.py": "X = 1\n"}, socket_path=path, ready=False)
    d.expect_clean_exit = False
    code = d.wait_exit()
    assert code in (1, 2), code
    log = d.log()
    assert base in log, log
    assert "%04o" % mode in log or "mode" in log, log
    assert not os.path.exists(path)
    assert stat.S_IMODE(os.stat(base).st_mode) == mode   # not "fixed" behind our back


def test_socket_directory_of_another_user_is_refused(pyhotd, short_tmp):
    if os.geteuid() != 0:
        pytest.skip("needs root to chown a directory")
    base = os.path.join(short_tmp, "theirs")
    os.mkdir(base, 0o700)
    os.chown(base, 65534, 65534)
    d = pyhotd({"m.py": "X = 1\n"}, socket_path=os.path.join(base, "pyhotd.sock"), ready=False)
    d.expect_clean_exit = False
    assert d.wait_exit() in (1, 2)
    assert base in d.log()


def test_second_daemon_on_same_socket_refuses(pyhotd):
    first = pyhotd({"m.py": "X = 1\n"})
    keep = first.client()
    assert keep.request("ping")["ok"] is True
    second = pyhotd({"m.py": "X = 1\n"}, socket_path=first.socket, ready=False)
    second.expect_clean_exit = False
    code = second.wait_exit()
    assert code in (1, 2), code
    assert first.socket in second.log()
    assert "already" in second.log()
    # The first one is untouched: its socket file is there and new clients get in.
    assert stat.S_ISSOCK(os.lstat(first.socket).st_mode)
    assert keep.request("ping")["result"]["pid"] == first.proc.pid
    with Client(first.socket) as c:
        assert c.request("ping")["result"]["pid"] == first.proc.pid


def test_stale_socket_is_replaced(pyhotd, short_tmp):
    sockdir = os.path.join(short_tmp, "stale")
    os.mkdir(sockdir, 0o700)
    path = os.path.join(sockdir, "pyhotd.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    d = pyhotd({"m.py": "X = 1\n"}, socket_path=path)
    assert d.conn.call("ping")["pid"] == d.proc.pid
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600


def test_regular_file_at_socket_path_is_not_replaced(pyhotd, short_tmp):
    sockdir = os.path.join(short_tmp, "file")
    os.mkdir(sockdir, 0o700)
    path = os.path.join(sockdir, "pyhotd.sock")
    with open(path, "w") as f:
        f.write("precious")
    d = pyhotd({"m.py": "X = 1\n"}, socket_path=path, ready=False)
    d.expect_clean_exit = False
    assert d.wait_exit() in (1, 2)
    assert path in d.log()
    with open(path) as f:
        assert f.read() == "precious"
