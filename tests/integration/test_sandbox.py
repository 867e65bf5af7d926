"""run --sandbox through the real binaries (docs/run.md "Sandbox"): no network, no files
outside what the run is given, no privileges, bounded processes that all die with the run,
no dangerous system calls, and a clear error when a layer cannot be set up.

Every script here starts with CAGE_CHECK: before it does anything that would harm the
machine were the sandbox broken, it checks from the inside that it is caged (seccomp
filter and no_new_privs on, no capabilities, not root, another network namespace than the
test's) and exits 99 otherwise, which fails the test. The scripts and the directories they
touch live in a directory of their own under /tmp, never in a watch root.
"""

import json
import os
import signal
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from conftest import (PYHOTCTL, PYHOTD, QUIET, SANITIZED, SCALE, TIMEOUT, child_pids, clean_env,
                      proc_status, running, wait_for, write)

NOT_CAGED = 99

CAGE_CHECK = r'''
import os, sys
def _caged():
    status = open("/proc/self/status").read()
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    return (fields.get("Seccomp", "").strip() == "2"
            and fields.get("NoNewPrivs", "").strip() == "1"
            and int(fields.get("CapEff", "1"), 16) == 0
            and int(fields.get("CapBnd", "1"), 16) == 0
            and os.geteuid() != 0
            and os.readlink("/proc/self/ns/net") != HOST_NETNS)
if not _caged():
    print("NOT CAGED", flush=True)
    os._exit(99)
'''

ROOT = os.geteuid() == 0
HOST_NETNS = os.readlink("/proc/self/ns/net")


@pytest.fixture
def cage():
    """A directory of the sandbox tests under /tmp (readable by the sandbox user, since a
    root daemon's runs are nobody): scripts/ (the scripts), work/ (the run's --cwd, the
    sandbox user's), outside/ (a readable secret) and outside_w/ (writable by everyone:
    only Landlock stops a write there)."""
    base = tempfile.mkdtemp(prefix="pyhot-sandbox-")
    os.chmod(base, 0o755)
    dirs = {}
    for name, mode in (("scripts", 0o755), ("work", 0o755), ("outside", 0o755), ("outside_w", 0o777)):
        path = os.path.join(base, name)
        os.mkdir(path)
        os.chmod(path, mode)
        dirs[name] = path
    if ROOT:
        nobody = pwd.getpwnam("nobody")
        os.chown(dirs["work"], nobody.pw_uid, nobody.pw_gid)
    write(os.path.join(dirs["outside"], "secret"), "the secret\n")
    dirs["base"] = base
    yield dirs
    shutil.rmtree(base, ignore_errors=True)


def script(cage, name, body):
    return write(os.path.join(cage["scripts"], name), CAGE_CHECK + body)


def run_sandboxed(d, cage, path, *extra, **kw):
    argv = [PYHOTCTL, "--socket", d.socket, "run", "--sandbox", "--cwd", cage["work"],
            "--set", "HOST_NETNS=%s" % json.dumps(HOST_NETNS)] + list(extra) + [path]
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT * 3,
                          env=clean_env(), **kw)


def ok_json(r):
    assert r.returncode != NOT_CAGED, "the run was not caged: " + r.stdout + r.stderr
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_no_network(pyhotd, cage):
    d = pyhotd()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        path = script(cage, "net.py", r'''
import json, socket
results = {}
for host in ("127.0.0.1", "10.0.0.1"):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((host, PORT))
        results[host] = "connected"
    except OSError as exc:
        results[host] = exc.__class__.__name__
    finally:
        s.close()
print(json.dumps(results))
''')
        result = ok_json(run_sandboxed(d, cage, path, "--set", "PORT=%d" % port))
        assert result["127.0.0.1"] != "connected" and result["10.0.0.1"] != "connected", result
        # The listener saw nothing.
        listener.settimeout(QUIET)
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()


def test_loopback_of_its_own(pyhotd, cage):
    d = pyhotd(config="[daemon]\nsocket = {socket}\n[watch]\nroot = {root}\n"
                      "[sandbox]\nnetwork = loopback\n")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        path = script(cage, "lo.py", r'''
import json, socket
own = socket.socket()
own.bind(("127.0.0.1", 0))
own.listen(1)
c = socket.create_connection(own.getsockname(), timeout=2)
peer, _ = own.accept()
c.sendall(b"ping")
got = peer.recv(4).decode()
s = socket.socket()
s.settimeout(2)
try:
    s.connect(("127.0.0.1", PORT))
    host = "connected"
except OSError as exc:
    host = exc.__class__.__name__
print(json.dumps({"own": got, "host": host}))
''')
        result = ok_json(run_sandboxed(d, cage, path, "--set", "PORT=%d" % port))
        assert result == {"own": "ping", "host": "ConnectionRefusedError"}, result
        listener.settimeout(QUIET)
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()


def test_filesystem(pyhotd, cage):
    d = pyhotd()
    path = script(cage, "fs.py", r'''
import json, os, tempfile
def attempt(what, fn):
    try:
        fn()
        return "ok"
    except OSError as exc:
        return exc.__class__.__name__
def put(path):
    with open(path, "w") as f:
        f.write("x")
tmp = os.environ["TMPDIR"]
print(json.dumps({
    "write_outside": attempt("w", lambda: put(os.path.join(OUTSIDE_W, "escaped"))),
    "write_cwd": attempt("w", lambda: put("inside.txt")),
    "write_tmp": attempt("w", lambda: put(os.path.join(tmp, "t"))),
    "tempfile": attempt("w", lambda: tempfile.TemporaryFile().close()),
    "read_outside": attempt("r", lambda: open(SECRET).read()),
    "read_etc": attempt("r", lambda: open("/etc/hostname").read()),
    "list_root": attempt("r", lambda: os.listdir("/")),
    "read_own_dir": attempt("r", lambda: os.listdir(os.path.dirname(__file__))),
    "tmpdir": tmp,
}))
''')
    result = ok_json(run_sandboxed(d, cage, path, "--set", "OUTSIDE_W=%s" % json.dumps(cage["outside_w"]),
                                   "--set", "SECRET=%s" % json.dumps(os.path.join(cage["outside"], "secret"))))
    assert result["write_outside"] == "PermissionError", result
    assert result["read_outside"] == "PermissionError" and result["read_etc"] == "PermissionError", result
    assert result["list_root"] == "PermissionError", result
    assert result["write_cwd"] == "ok" and result["write_tmp"] == "ok" and result["tempfile"] == "ok", result
    assert result["read_own_dir"] == "ok", result
    assert os.listdir(cage["outside_w"]) == []
    assert open(os.path.join(cage["work"], "inside.txt")).read() == "x"
    # The private TMPDIR is a tmpfs of the run's own mount namespace, gone with the run: on
    # the host its mount point is an empty directory, during the run and after it.
    assert os.path.isdir(result["tmpdir"]) and os.listdir(result["tmpdir"]) == [], result["tmpdir"]


def test_private_tmpdir_is_limited(pyhotd, cage):
    d = pyhotd(config="[daemon]\nsocket = {socket}\n[watch]\nroot = {root}\n"
                      "[sandbox]\ntmp_size_mb = 1\n")
    path = script(cage, "tmpfull.py", r'''
import errno, json, os
written = 0
try:
    with open(os.path.join(os.environ["TMPDIR"], "big"), "wb") as f:
        for _ in range(64):          # 4 MiB at most, into a 1 MiB tmpfs
            f.write(b"x" * 65536)
            f.flush()
            written += 65536
    result = "fits"
except OSError as exc:
    result = errno.errorcode[exc.errno]
print(json.dumps({"result": result, "written": written}))
''')
    result = ok_json(run_sandboxed(d, cage, path))
    assert result["result"] == "ENOSPC" and result["written"] <= 1024 * 1024, result


def test_privileges(pyhotd, cage):
    d = pyhotd()
    path = script(cage, "priv.py", r'''
import json, os
fields = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
print(json.dumps({"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "egid": os.getegid(),
                  "groups": os.getgroups(), "nnp": fields["NoNewPrivs"].strip(),
                  "caps": {k: int(fields[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}}))
''')
    result = ok_json(run_sandboxed(d, cage, path))
    if ROOT:
        nobody = pwd.getpwnam("nobody")
        assert (result["uid"], result["euid"]) == (nobody.pw_uid, nobody.pw_uid), result
        assert (result["gid"], result["egid"]) == (nobody.pw_gid, nobody.pw_gid), result
        assert result["groups"] == [], result
    assert result["nnp"] == "1", result
    assert all(v == 0 for v in result["caps"].values()), result


def test_dangerous_syscalls_get_eperm(pyhotd, cage):
    d = pyhotd()
    path = script(cage, "sys.py", r'''
import ctypes, errno, json, socket
libc = ctypes.CDLL(None, use_errno=True)
def err(r):
    return errno.errorcode.get(ctypes.get_errno(), "?") if r == -1 else "succeeded"
CLONE_NEWUSER, CLONE_NEWNET, PTRACE_TRACEME = 0x10000000, 0x40000000, 0
out = {
    "unshare_user": err(libc.unshare(CLONE_NEWUSER)),
    "unshare_net": err(libc.unshare(CLONE_NEWNET)),
    "mount": err(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)),
    "ptrace": err(libc.ptrace(PTRACE_TRACEME, 0, None, None)),
    "setsid": err(libc.setsid()),
    "keyctl": err(libc.syscall(250, 0, 0, 0, 0, 0)),
    "bpf": err(libc.syscall(321, 0, None, 0)),
}
try:
    socket.socket(socket.AF_UNIX)
    out["unix_socket"] = "succeeded"
except OSError as exc:
    out["unix_socket"] = errno.errorcode[exc.errno]
print(json.dumps(out))
''')
    result = ok_json(run_sandboxed(d, cage, path))
    assert result == {k: "EPERM" for k in result} and len(result) == 8, result


def test_fork_bomb_is_bounded_and_the_daemon_answers(pyhotd, cage):
    d = pyhotd()
    path = script(cage, "bomb.py", r'''
import json, os, time
pids, refused = [], None
for i in range(200):      # bounded: far more than --pids allows
    try:
        pid = os.fork()
    except OSError as exc:
        refused = exc.__class__.__name__
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    pids.append(pid)
print(json.dumps({"pids": pids, "refused": refused}), flush=True)
time.sleep(0.5)           # the daemon is pinged while they all live
''')
    pings, stop = [], threading.Event()

    def pinger():
        with d.client() as c:
            while not stop.is_set():
                t0 = time.monotonic()
                c.call("ping")
                pings.append(time.monotonic() - t0)
                stop.wait(0.01)

    thread = threading.Thread(target=pinger)
    thread.start()
    try:
        t0 = time.monotonic()
        r = run_sandboxed(d, cage, path, "--pids", "16")
        took = time.monotonic() - t0
        result = ok_json(r)
        assert result["refused"] == "BlockingIOError", result
        assert 0 < len(result["pids"]) < 16, result
        # The children (sleeping 60 s) died with the run; it did not wait for them.
        assert took < 30, took
        for pid in result["pids"]:
            wait_for(lambda: not running(pid), what="process %d of the run to be gone" % pid)
    finally:
        stop.set()
        thread.join()
    assert len(pings) >= 10, pings
    assert max(pings) < 0.1 * SCALE, "the daemon took %.1f ms to answer a ping" % (max(pings) * 1000)
    assert d.alive()


def test_background_child_killed_when_the_run_ends(pyhotd, cage):
    d = pyhotd()
    path = script(cage, "bg.py", r'''
import os, sys, time
pid = os.fork()
if pid == 0:
    os.close(1)
    os.close(2)
    time.sleep(60)
    os._exit(0)
print(pid, flush=True)
''')
    r = run_sandboxed(d, cage, path)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    pid = int(r.stdout.split()[-1])
    wait_for(lambda: not running(pid), what="the background child %d to be killed" % pid)


def test_limits_apply_and_a_timeout_kills_the_whole_run(pyhotd, cage):
    d = pyhotd()
    marker = os.path.join(cage["work"], "child")
    path = script(cage, "hang.py", r'''
import os, time
pid = os.fork()
if pid == 0:
    time.sleep(60)
    os._exit(0)
open("child", "w").write(str(pid))
x = bytearray(64 * 1024 * 1024) if BIG else b""
time.sleep(60)
''')
    t0 = time.monotonic()
    r = run_sandboxed(d, cage, path, "--timeout", "0.5", "--set", "BIG=false")
    assert r.returncode == 124 and time.monotonic() - t0 < 30, (r.returncode, r.stderr)
    pid = int(open(marker).read())
    wait_for(lambda: not running(pid), what="the run's child %d to be killed with it" % pid)
    # --memory as for --isolate: what the child may add to the image it was forked with.
    r = run_sandboxed(d, cage, path, "--timeout", "5", "--memory", "32", "--set", "BIG=true")
    if SANITIZED:
        # ASan's allocator reserves its own address space and gives up first.
        assert r.returncode != 0 and ("MemoryError" in r.stderr or "AddressSanitizer" in r.stderr), r.stderr
    else:
        assert r.returncode == 1 and r.stderr.rstrip().endswith("MemoryError"), (r.returncode, r.stderr)
    pid = int(open(marker).read())
    wait_for(lambda: not running(pid), what="the run's child %d to be killed with it" % pid)


def test_a_failing_step_stops_the_run(pyhotd, cage):
    """A real failing condition in one layer: a write path that does not exist. The run
    ends with 125 and an error naming the step; nothing of the script ran."""
    missing = os.path.join(cage["base"], "no-such-dir")
    d = pyhotd(config="[daemon]\nsocket = {socket}\n[watch]\nroot = {root}\n"
                      "[sandbox]\nwrite = %s\n" % missing)
    marker = os.path.join(cage["outside_w"], "ran")
    path = script(cage, "never.py", "open(%r, 'w').write('ran')\nprint('RAN')\n" % marker)
    r = run_sandboxed(d, cage, path)
    assert r.returncode == 125, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == "" and not os.path.exists(marker), r.stdout
    assert r.stderr.startswith("pyhot: sandbox: filesystem: %s: No such file or directory" % missing), r.stderr
    assert "the script did not run" in r.stderr, r.stderr
    assert d.alive()


def test_sandbox_arguments(pyhotd, cage):
    d = pyhotd()
    with d.client() as c:
        r = c.request("run", path=os.path.join(cage["scripts"], "x.py"), pids=4)
        assert r["error"]["code"] == "bad_argument" and "sandbox" in r["error"]["message"], r
        r = c.request("run", path=os.path.join(cage["scripts"], "x.py"), sandbox="yes")
        assert r["error"]["code"] == "bad_argument", r
        r = c.request("run", path=os.path.join(cage["scripts"], "x.py"), sandbox=True, pids=0)
        assert r["error"]["code"] == "bad_argument", r
    if ROOT:
        # A user that does not resolve is a configuration error (test_cli.py for the start):
        # a SIGHUP that brings one is refused and sandboxed runs keep the old user.
        d = pyhotd(config="[daemon]\nsocket = {socket}\n[watch]\nroot = {root}\n")
        sub = d.subscriber()
        with open(os.path.join(d.base, "pyhotd.conf"), "a") as f:
            f.write("[sandbox]\nuser = no_such_user_pyhot\n")
        d.proc.send_signal(signal.SIGHUP)
        event = sub.next_event(lambda e: e["event"] in ("config_error", "config_reloaded"))
        assert event["event"] == "config_error", event
        assert 'sandbox user "no_such_user_pyhot": no such user' in event["message"], event
        who = script(cage, "who.py", "import os\nprint(os.getuid())\n")
        r = run_sandboxed(d, cage, who)
        assert r.returncode == 0 and r.stdout == "%d\n" % pwd.getpwnam("nobody").pw_uid, r
    r = subprocess.run([PYHOTCTL, "run", "--help"], capture_output=True, text=True, env=clean_env())
    assert "--sandbox" in r.stdout and max(len(line) for line in r.stdout.splitlines()) <= 80, r.stdout


def test_every_run_is_logged(pyhotd, cage, tmp_path):
    d = pyhotd()
    plain = write(os.path.join(cage["scripts"], "plain.py"), "x = sum(range(100000))\nraise SystemExit(3)\n")
    caged = script(cage, "caged.py", "print('in')\n")
    with d.subscriber() as sub:
        procs = {}
        for mode in ("in-process", "isolated", "sandboxed"):
            argv = [PYHOTCTL, "--socket", d.socket, "run"]
            if mode == "isolated":
                argv += ["--isolate", "--cwd", cage["work"]]
            if mode == "sandboxed":
                argv += ["--sandbox", "--cwd", cage["work"], "--set", "HOST_NETNS=%s" % json.dumps(HOST_NETNS)]
            p = subprocess.Popen(argv + [caged if mode == "sandboxed" else plain], env=clean_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            p.communicate(timeout=TIMEOUT)
            procs[mode] = p
            event = sub.next_event(lambda e: e["event"] == "run")
            assert event["peer_uid"] == os.getuid() and event["peer_pid"] == p.pid, event
            assert event["isolated"] == (mode != "in-process"), event
            assert event["sandboxed"] == (mode == "sandboxed"), event
            assert event["exit_code"] == (0 if mode == "sandboxed" else 3) == p.returncode, (event, p.returncode)
            assert event["signal"] is None and event["timed_out"] is False, event
            assert event["script"] == (caged if mode == "sandboxed" else plain), event
            assert event["duration_ms"] > 0 and event["cpu_ms"] > 0 and event["max_rss_kb"] > 0, event
    status = d.status()
    assert status["runs_ended"] == {"total": 3, "isolated": 2, "sandboxed": 1, "failed": 2,
                                    "timed_out": 0}, status["runs_ended"]
    assert "(sandboxed) for uid %d" % os.getuid() in d.log()
    shown = subprocess.run([PYHOTCTL, "--socket", d.socket, "status"], capture_output=True, text=True,
                           env=clean_env()).stdout
    assert "0 running, 3 ended (2 isolated, 1 sandboxed, 2 failed, 0 timed out)" in shown, shown
    tail = subprocess.run([PYHOTCTL, "--socket", d.socket, "history", "-e", "run"], capture_output=True,
                          text=True, env=clean_env()).stdout
    assert " run 3 %s sandboxed exited 0 in " % caged in tail, tail


@pytest.mark.skipif(not ROOT or not shutil.which("setpriv"), reason="needs root to start a daemon as nobody")
def test_a_daemon_that_is_not_root(cage):
    """A daemon that is not root cages its runs in a user namespace of their own: the same
    layers, its own uid kept; the run cannot reach the daemon's socket (same uid)."""
    nobody = pwd.getpwnam("nobody")
    sockdir = os.path.join(cage["base"], "sock")
    root = os.path.join(cage["base"], "root")
    for path in (sockdir, root):
        os.mkdir(path, 0o700)
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    sock = os.path.join(sockdir, "pyhotd.sock")
    log = open(os.path.join(cage["base"], "pyhotd.log"), "wb")
    daemon = subprocess.Popen(["setpriv", "--reuid=nobody", "--regid=%d" % nobody.pw_gid, "--clear-groups",
                               PYHOTD, "--socket", sock, "--watch", root], stdin=subprocess.DEVNULL,
                              stdout=log, stderr=log, env=clean_env())
    try:
        wait_for(lambda: subprocess.run([PYHOTCTL, "--socket", sock, "ping"], capture_output=True,
                                        env=clean_env()).returncode == 0, what="pyhotd as nobody")
        path = script(cage, "nonroot.py", r"""
import ctypes, errno, json, os, socket
fields = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
out = {"uid": os.getuid(), "caps": int(fields["CapEff"], 16), "userns": os.readlink("/proc/self/ns/user")}
for name, fn in (("connect", lambda: socket.create_connection(("127.0.0.1", 9), timeout=2)),
                 ("daemon_socket", lambda: socket.socket(socket.AF_UNIX).connect(SOCK)),
                 ("write_outside", lambda: open(os.path.join(OUTSIDE_W, "x"), "w"))):
    try:
        fn()
        out[name] = "ok"
    except OSError as exc:
        out[name] = exc.__class__.__name__
print(json.dumps(out))
""")
        r = subprocess.run([PYHOTCTL, "--socket", sock, "run", "--sandbox", "--cwd", cage["work"],
                            "--set", "HOST_NETNS=%s" % json.dumps(HOST_NETNS), "--set", "SOCK=%s" % json.dumps(sock),
                            "--set", "OUTSIDE_W=%s" % json.dumps(cage["outside_w"]), path],
                           capture_output=True, text=True, timeout=TIMEOUT * 3, env=clean_env())
        result = ok_json(r)
        assert result["uid"] == nobody.pw_uid and result["caps"] == 0, result
        assert result["userns"] != os.readlink("/proc/self/ns/user"), result
        assert result["connect"] != "ok" and result["write_outside"] == "PermissionError", result
        assert result["daemon_socket"] == "PermissionError", result
    finally:
        subprocess.run([PYHOTCTL, "--socket", sock, "stop"], capture_output=True, env=clean_env())
        try:
            daemon.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            daemon.send_signal(signal.SIGKILL)
            daemon.wait()
        log.close()


LOOPBACK_UP = r'''
import json, socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
try:
    s.bind(("127.0.0.1", 0))
    s.sendto(b"x", s.getsockname())
    up = s.recv(1) == b"x"
except OSError:
    up = False
print(json.dumps({"loopback_up": up}))
'''


def test_a_sandbox_settings_change_reaches_the_next_run(pyhotd, cage):
    """A ready sandboxed child was unshared with the [sandbox] settings of its time: after
    a configuration reload (SIGHUP) that changes them, the next run has the new ones."""
    config = ("[daemon]\nsocket = {socket}\n[watch]\nroot = {root}\n[sandbox]\nnetwork = %s\n")
    d = pyhotd(config=config % "none")
    path = script(cage, "lo_up.py", LOOPBACK_UP)
    assert ok_json(run_sandboxed(d, cage, path)) == {"loopback_up": False}
    wait_for(lambda: d.status()["prefork"]["ready"]["sandboxed"] >= 1, what="a ready sandboxed child")
    assert ok_json(run_sandboxed(d, cage, path)) == {"loopback_up": False}
    hits = d.status()["prefork"]["hits"]
    assert hits >= 1, d.status()["prefork"]
    wait_for(lambda: d.status()["prefork"]["ready"]["sandboxed"] >= 1, what="a ready sandboxed child")
    cfg = os.path.join(d.base, "pyhotd.conf")
    with open(cfg) as f:
        text = f.read()
    write(cfg, text.replace("network = none", "network = loopback"))
    with d.subscriber() as sub:
        d.proc.send_signal(signal.SIGHUP)
        sub.next_event(lambda e: e["event"] == "config_reloaded")
    assert ok_json(run_sandboxed(d, cage, path)) == {"loopback_up": True}
    assert d.status()["prefork"]["hits"] == hits, d.status()["prefork"]


def test_without_ready_children(pyhotd, cage):
    """[run] prefork = 0: every sandboxed run forks its own child at the request, caged
    the same."""
    d = pyhotd(config="[daemon]\nsocket = {socket}\n[watch]\nroot = {root}\n[run]\nprefork = 0\n")
    path = script(cage, "lo_up.py", LOOPBACK_UP)
    for _ in range(2):
        assert ok_json(run_sandboxed(d, cage, path)) == {"loopback_up": False}
    prefork = d.status()["prefork"]
    assert prefork["hits"] == 0 and prefork["misses"] == 2 and prefork["ready"]["sandboxed"] == 0, prefork


def test_an_import_path_gone_since_it_was_listed_is_skipped(pyhotd, cage):
    """The import paths a sandboxed run may read are listed once per interpreter state
    and reused; one removed in between is left out of the cage, not an error."""
    extra = os.path.join(cage["base"], "extra_path")
    os.mkdir(extra)
    os.chmod(extra, 0o755)
    d = pyhotd(args=["--python-path", extra])
    path = script(cage, "plain.py", "print('ran')\n")
    r = run_sandboxed(d, cage, path)
    assert r.returncode == 0 and r.stdout.strip().endswith("ran"), (r.returncode, r.stdout, r.stderr)
    os.rmdir(extra)
    r = run_sandboxed(d, cage, path)
    assert r.returncode == 0 and r.stdout.strip().endswith("ran"), (r.returncode, r.stdout, r.stderr)


NETNS_AND_LOOPBACK = r'''
import fcntl, json, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sh", fcntl.ioctl(s, 0x8913, struct.pack("16sh", b"lo", 0)))[1]  # SIOCGIFFLAGS
try:                                          # SIOCSIFFLAGS: IFF_UP
    fcntl.ioctl(s, 0x8914, struct.pack("16sh", b"lo", flags | 1))
    raised = "up"
except OSError as exc:
    raised = exc.__class__.__name__
print(json.dumps({"netns": os.readlink("/proc/self/ns/net"), "up": bool(flags & 1), "raise": raised}))
'''


@pytest.mark.skipif(not ROOT, reason="a daemon that is not root makes a namespace per run")
def test_network_none_runs_share_one_namespace_whose_loopback_stays_down(pyhotd, cage):
    """A root daemon's network = none runs enter one namespace made once (docs/run.md
    "Sandbox"): none of them can bring its loopback up, so none can reach another. Runs
    with a loopback of their own each get their own namespace."""
    d = pyhotd()
    path = script(cage, "netns.py", NETNS_AND_LOOPBACK)
    first, second = (ok_json(run_sandboxed(d, cage, path)) for _ in range(2))
    assert first["netns"] == second["netns"] != HOST_NETNS, (first, second)
    for r in (first, second):
        assert not r["up"] and r["raise"] == "PermissionError", r
    d = pyhotd(config="[daemon]\nsocket = {socket}\n[watch]\nroot = {root}\n"
                      "[sandbox]\nnetwork = loopback\n")
    first, second = (ok_json(run_sandboxed(d, cage, path)) for _ in range(2))
    assert first["netns"] != second["netns"], (first, second)
    assert first["up"] and second["up"], (first, second)


HOLDER = r'''
import json
own = os.getpid()
print(json.dumps({"children": open("/proc/self/task/%d/children" % own).read().split(),
                  "policy": os.sched_getscheduler(0)}))
'''


@pytest.mark.skipif(not ROOT, reason="zombies of the sandbox user take a root test")
def test_the_memory_holder_starts_while_the_sandbox_user_has_zombies(pyhotd, cage):
    """The run's memory holder (lib/py_run.c) is started before RLIMIT_NPROC is set: zombies
    of the sandbox user that init has not reaped yet (earlier runs' holders, on a machine
    whose init reaps late) count against that limit and used to refuse it, which put the
    address space's tear-down back on the run's end. The script runs as SCHED_OTHER."""
    d = pyhotd()
    nobody = pwd.getpwnam("nobody")
    maker = subprocess.Popen(
        [sys.executable, "-c",
         "import os, sys, time\nos.setgroups([])\nos.setgid(%d)\nos.setuid(%d)\n"
         "for _ in range(12):\n    if os.fork() == 0:\n        os._exit(0)\n"
         "print('ready', flush=True)\ntime.sleep(120)\n" % (nobody.pw_gid, nobody.pw_uid)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert maker.stdout.readline() == "ready\n"
        wait_for(lambda: len(child_pids(maker.pid)) == 12, what="12 zombies of nobody")
        path = script(cage, "holder.py", HOLDER)
        result = ok_json(run_sandboxed(d, cage, path, "--pids", "8"))
        assert len(result["children"]) == 1 and result["policy"] == os.SCHED_OTHER, result
    finally:
        maker.kill()
        maker.wait()


def test_a_ready_child_is_filtered_before_its_request(pyhotd, cage):
    """A ready sandboxed child makes its process group, empties its capability bounding set
    and loads the seccomp filter before any request comes (docs/run.md "Ready children"):
    the filter's load is no part of a run's wait, and the run is as caged as before."""
    d = pyhotd()
    path = script(cage, "holder.py", HOLDER)
    assert ok_json(run_sandboxed(d, cage, path))["policy"] == os.SCHED_OTHER
    wait_for(lambda: d.status()["prefork"]["ready"]["sandboxed"] == 3, what="3 ready sandboxed children")
    waiting = child_pids(d.proc.pid, live=True)
    assert len(waiting) == 3, waiting          # no isolated run was asked: sandboxed ones only
    wait_for(lambda: all(proc_status(p, "Seccomp") == "2" for p in waiting),
             what="the ready children's seccomp filter")
    for pid in waiting:
        assert os.getpgid(pid) == pid and int(proc_status(pid, "CapBnd"), 16) == 0, pid
    result = ok_json(run_sandboxed(d, cage, path))
    assert result["policy"] == os.SCHED_OTHER, result
