"""The control socket: framing and errors, exec, deadlines, status/modules/reload, socket
security, stopping."""

import json
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time

import pytest

from conftest import SCALE, TIMEOUT, Client, Closed, wait_for, write

# These tests count how often a module's top level runs (a reload each): whole-module
# reloads. test_reload_definitions.py covers the default, definition-level mode.
pytestmark = pytest.mark.reload_mode("module")


# ---- framing and request errors ---------------------------------------------------------------

def test_malformed_requests_get_errors_and_the_connection_keeps_working(pyhotd):
    d = pyhotd({"m.py": "X = 1\n"})
    c = d.client()

    c.send_raw(b'{"id": 1, "cmd": \n')
    r = c.response()
    assert r["ok"] is False and r["id"] is None and r["error"]["code"] == "parse_error", r
    assert r["error"]["message"]
    assert c.request("ping")["result"]["pong"] is True      # same connection

    for raw in (b"[1, 2]\n", b'"ping"\n', b"42\n", b"null\n"):
        c.send_raw(raw)
        r = c.response()
        assert r["ok"] is False and r["error"]["code"] == "invalid_request", (raw, r)
    c.send_raw(b'{"id": 5}\n')
    r = c.response()
    assert r["error"]["code"] == "invalid_request" and r["id"] == 5, r
    c.send_raw(b'{"id": 6, "cmd": 7}\n')
    assert c.response()["error"]["code"] == "invalid_request"

    r = c.request("frobnicate")
    assert r["ok"] is False and r["error"]["code"] == "unknown_command", r
    assert "frobnicate" in r["error"]["message"]

    c.send_raw(b'{"id": 8, "cmd": "ping", "junk": "\xff\xfe"}\n')     # not UTF-8
    r = c.response()
    assert r["ok"] is False and r["error"]["code"] == "parse_error", r

    # String ids are echoed; CRLF, blank lines, two requests in one write, one request in
    # several writes all work.
    c.send_raw(b'{"id": "abc", "cmd": "ping"}\r\n')
    assert c.response()["id"] == "abc"
    c.send_raw(b'\n\n{"id": 10, "cmd": "ping"}\n{"id": 11, "cmd": "ping"}\n')
    assert [c.response()["id"], c.response()["id"]] == [10, 11]
    for part in (b'{"id": 12, ', b'"cmd": "pi', b'ng"}', b"\n"):
        c.send_raw(part)
        time.sleep(0.01)
    assert c.response(12)["ok"] is True
    assert c.request("ping")["ok"] is True


def test_argument_errors(pyhotd):
    d = pyhotd({"m.py": "X = 1\n"})
    c = d.client()
    for cmd, args in (("exec", {}), ("exec", {"code": 5}), ("reload", {}),
                      ("reload", {"targets": []}), ("reload", {"targets": [1]}),
                      ("modules", {"pattern": 3})):
        r = c.request(cmd, **args)
        assert r["ok"] is False and r["error"]["code"] == "bad_argument", (cmd, args, r)
    assert c.request("ping")["ok"] is True


def test_oversized_request_line(pyhotd):
    d = pyhotd({"m.py": "X = 1\n"})
    c = d.client()
    big = b'{"id": 1, "cmd": "exec", "code": "' + b"x" * (2 << 20) + b'"}\n'
    sender = threading.Thread(target=lambda: _send_ignoring_reset(c.sock, big), daemon=True)
    sender.start()
    r = c.read_message()
    assert r["ok"] is False and r["error"]["code"] == "request_too_large", r
    sender.join(TIMEOUT)
    # The daemon may close that connection; if it does, it closes it cleanly after the
    # error line. Either way everyone else is served.
    try:
        c.send_raw(b'{"id": 2, "cmd": "ping"}\n')
        r = c.read_message(timeout=2 * SCALE)
        assert r["ok"] is True
    except (Closed, BrokenPipeError, ConnectionResetError):
        pass
    assert d.conn.call("ping")["pong"] is True


def _send_ignoring_reset(sock, data):
    try:
        sock.sendall(data)
    except OSError:
        pass


def test_too_many_clients(pyhotd):
    """Past its connection limit the daemon answers too_many_clients and closes; a freed
    slot is given back. (The limit is internal: found by connecting until refused.)"""
    d = pyhotd({"m.py": "X = 1\n"})
    clients = []
    refused = None
    try:
        while refused is None and len(clients) < 512:
            batch = [Client(d.socket) for _ in range(32)]
            clients += batch
            # Admitted clients hear nothing until they ask; a refused one is told at once.
            readable, _, _ = select.select([c.sock for c in batch], [], [], 0.3 * SCALE)
            if readable:
                refused = next(c for c in batch if c.sock is readable[0])
        assert refused is not None, "512 connections and none refused"
        r = refused.read_message()
        assert r["ok"] is False and r["error"]["code"] == "too_many_clients", r
        with pytest.raises(Closed):
            refused.read_message()
        assert clients.index(refused) >= 8
        # Everyone admitted is still served.
        assert clients[0].request("ping")["ok"] is True
        for c in clients:
            c.close()

        def admitted():
            # Until the daemon has seen the closes, a newcomer may still be refused.
            with Client(d.socket) as c:
                c.send("ping")
                return c.response().get("ok") is True
        wait_for(admitted, what="a freed slot")
    finally:
        for c in clients:
            c.close()


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


def _exec_in_thread(d, code):
    box = {}
    c = d.client(timeout=TIMEOUT + 30)

    def run():
        start = time.monotonic()
        try:
            box["reply"] = c.request("exec", code=code)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            box["exception"] = exc
        box["elapsed"] = time.monotonic() - start
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


@pytest.mark.parametrize("code", [
    "import time; time.sleep(30)",
    "while True:\n    pass\n",
    "import os\nr, w = os.pipe()\nos.read(r, 1)\n",
], ids=["sleep", "busy-loop", "blocking-read"])
def test_exec_deadline(pyhotd, code):
    d = pyhotd({"app.py": "def main():\n    pass\n"}, config=DEADLINE_CONFIG)
    t, box = _exec_in_thread(d, code)
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
    t, box = _exec_in_thread(d, code)
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


# ---- status, modules, reload -------------------------------------------------------------------

COUNTING = "try:\n    LOADS += 1\nexcept NameError:\n    LOADS = 1\nVALUE = {value}\n"


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
    assert st["roots"] == [{"path": d.root, "state": "watching"}]
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


# ---- the socket --------------------------------------------------------------------------------

def test_socket_permissions(pyhotd):
    d = pyhotd({"m.py": "X = 1\n"})
    st = os.lstat(d.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert stat.S_IMODE(os.stat(d.sockdir).st_mode) == 0o700


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


SETPRIV = shutil.which("setpriv")

PEER_SCRIPT = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
try:
    s.sendall(b'{"id": 1, "cmd": "exec", "code": "open(%r, \"w\").write(\"pwned\")"}\n' % sys.argv[2])
except OSError:
    pass
data = b""
while True:
    try:
        chunk = s.recv(65536)
    except ConnectionResetError:
        break
    if not chunk:
        break
    data += chunk
print(json.dumps({"lines": data.decode().splitlines(), "eof": True}))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")
@pytest.mark.skipif(SETPRIV is None, reason="setpriv (util-linux) is not installed")
def test_peer_of_another_uid_is_refused(pyhotd, tmp_path, short_tmp):
    d = pyhotd({"m.py": "X = 1\n"})
    marker = str(tmp_path / "pwned")
    # Let uid 65534 reach the socket at all, so that only SO_PEERCRED stands in its way.
    os.chmod(short_tmp, 0o711)
    os.chmod(d.sockdir, 0o711)
    os.chmod(d.socket, 0o666)
    try:
        proc = subprocess.run(
            [SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
             "-c", PEER_SCRIPT, d.socket, marker],
            capture_output=True, text=True, timeout=TIMEOUT, cwd="/")
    finally:
        os.chmod(d.socket, 0o600)
        os.chmod(d.sockdir, 0o700)
        os.chmod(short_tmp, 0o700)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["eof"] is True
    assert len(out["lines"]) == 1, out
    reply = json.loads(out["lines"][0])
    assert reply["ok"] is False and reply["error"]["code"] == "permission_denied", reply
    assert not os.path.exists(marker), "the refused peer's exec ran"
    assert "65534" in d.log()
    assert d.conn.call("ping")["pong"] is True


# ---- stopping ----------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly(pyhotd, sig):
    d = pyhotd({"m.py": "X = 1\n"})
    sub = d.subscriber()
    d.proc.send_signal(sig)
    ev = sub.next_event("stopping")
    assert sig.name in ev["reason"], ev
    with pytest.raises(Closed):
        sub.read_message()
    assert d.wait_exit() == 0
    assert not os.path.exists(d.socket)
    assert "stopped" in d.log()


def test_shutdown_command(pyhotd):
    d = pyhotd({"m.py": "X = 1\n"})
    sub = d.subscriber()
    assert d.shutdown() == 0
    assert sub.next_event("stopping")["event"] == "stopping"
    assert not os.path.exists(d.socket)


def test_shutdown_while_a_job_runs(pyhotd):
    d = pyhotd({"m.py": "X = 1\n"})
    t, box = _exec_in_thread(d, "import time; time.sleep(60)")
    wait_for(lambda: d.status()["job"], what="the exec job to start")
    start = time.monotonic()
    with Client(d.socket) as c:
        assert c.call("shutdown") == {"stopping": True}
    assert d.wait_exit(timeout=TIMEOUT) == 0
    assert time.monotonic() - start < 2 + 3 * SCALE
    assert not os.path.exists(d.socket)
    t.join(TIMEOUT)
    reply = box.get("reply")
    # The running exec is answered (interrupted) or its connection closed; never left hanging.
    assert reply is None or reply["ok"] is False, box


def test_requests_after_shutdown_are_refused_or_closed(pyhotd):
    d = pyhotd({"m.py": "X = 1\n"})
    c = d.client()
    t, box = _exec_in_thread(d, "import time; time.sleep(60)")
    wait_for(lambda: d.status()["job"], what="the exec job to start")
    c.send("shutdown")
    c.send("exec", code="1")
    got = []
    try:
        while len(got) < 2:
            got.append(c.read_message())
    except Closed:
        pass
    assert got and got[0]["result"] == {"stopping": True}, got
    if len(got) > 1:
        assert got[1]["ok"] is False and got[1]["error"]["code"] == "shutting_down", got
    assert d.wait_exit() == 0
