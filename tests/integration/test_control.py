"""The control socket through the real daemon: framing and request errors, the request
line and client limits as a client meets them, and stopping (signals, shutdown, requests
after it)."""

import os
import re
import select
import signal
import socket
import threading
import time

import pytest

from conftest import SCALE, TIMEOUT, Client, Closed, exec_in_thread, wait_for

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
    t, box = exec_in_thread(d, "import time; time.sleep(60)")
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
    t, box = exec_in_thread(d, "import time; time.sleep(60)")
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


def test_an_entry_that_dies_is_an_error_in_the_log_events_and_status(pyhotd, pyhotctl):
    """The entry raising (its port taken, as when another demo runs) is an ERROR with its
    cause, an entry_ended event, and state "failed" in status; the daemon keeps serving."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    app = ("import socket\n\ndef main():\n    s = socket.socket()\n"
           "    s.bind(('127.0.0.1', %d))\n" % port)
    try:
        d = pyhotd({"app.py": app}, args=["--entry", "app:main"])
        wait_for(lambda: "ERROR: entry app:main failed: OSError" in d.log(), what="the ERROR line")
        assert "Address already in use" in d.log()
        entry = d.status()["entry"]
        assert (entry["name"], entry["state"], entry["error"]["type"]) == \
            ("app:main", "failed", "OSError"), entry
        assert entry["error"]["line"] == 5 and entry["error"]["file"].endswith("app.py"), entry
        out = pyhotctl("status", socket=d.socket).stdout
        assert re.search(r"^entry:\s+app:main failed: OSError: .*Address already in use.*app\.py:5\)$",
                         out, re.M), out
        ended = d.conn.call("history", events="entry_ended")["events"]
        assert [(e["entry"], e["state"]) for e in ended] == [("app:main", "failed")], ended
        assert d.conn.call("ping")["pong"] is True
    finally:
        blocker.close()


def test_entry_state_running_and_returned(pyhotd):
    d = pyhotd({"app.py": "import threading\n\ndef main():\n    threading.Event().wait()\n"},
               args=["--entry", "app:main"])
    assert d.status()["entry"] == {"name": "app:main", "state": "running"}
    d = pyhotd({"app.py": "def main():\n    return 1\n"}, args=["--entry", "app:main"])
    wait_for(lambda: d.status()["entry"]["state"] == "returned", what="state returned")
    assert "INFO: entry app:main returned" in d.log()
    d = pyhotd({"app.py": "X = 1\n"}, args=["--entry", "app:nothing"])
    entry = d.status()["entry"]
    assert (entry["state"], entry["error"]["type"]) == ("not_started", "AttributeError"), entry
    assert pyhotd({"app.py": "X = 1\n"}).status()["entry"] is None

