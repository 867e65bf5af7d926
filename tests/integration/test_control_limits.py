"""Limits of the control socket, each through the real daemon: the request line cap (and
memory staying bounded), max_clients, slow subscribers (overflow notice, others
unaffected), unfinished requests, and EMFILE pausing accept instead of spinning."""

import os
import resource
import select
import threading
import time

import pytest

from conftest import QUIET, SANITIZED, SCALE, TIMEOUT, Client, Closed, proc_status, wait_for, write

# These tests count how often a module's top level runs (a reload each): whole-module
# reloads. test_reload_definitions.py covers the default, definition-level mode.
pytestmark = pytest.mark.reload_mode("module")

MIB = 1024 * 1024
MAX_LINE = MIB


def _config(**daemon):
    lines = ["[daemon]", "socket = {socket}", "log_level = debug"]
    lines += ["%s = %s" % (k, v) for k, v in daemon.items()]
    lines += ["", "[watch]", "root = {root}", ""]
    return "\n".join(lines)


def _rss_kib(pid):
    return int(proc_status(pid, "VmRSS").split()[0])


def _cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of proc(5); fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _send_in_background(sock, data):
    def run():
        try:
            sock.sendall(data)
        except OSError:
            pass        # the daemon closed the connection: expected
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _read_until_closed(client, timeout=None):
    lines = []
    while True:
        try:
            lines.append(client.read_message(timeout))
        except (Closed, ConnectionResetError):
            # Linux reports ECONNRESET, once the lines sent are read, when the daemon
            # closed with bytes of ours unread (unix(7) sockets have no RST otherwise).
            return lines


def _expect_closed(client):
    assert _read_until_closed(client) == []


# ---- request lines ---------------------------------------------------------------------------

def test_request_line_of_exactly_the_limit_is_served(pyhotd):
    d = pyhotd({"m.py": "X = 1\n"})
    c = d.client()
    head, tail = b'{"id": 1, "cmd": "exec", "code": "len(\'', b'\')"}'
    line = head + b"x" * (MAX_LINE - len(head) - len(tail)) + tail
    assert len(line) == MAX_LINE
    _send_in_background(c.sock, line + b"\n")
    r = c.read_message()
    assert r["ok"] is True, r
    assert int(r["result"]["value"]) == MAX_LINE - len(head) - len(tail)

    c2 = d.client()
    _send_in_background(c2.sock, line[:-1] + b"xx\n")      # one byte over
    r = c2.read_message()
    assert r == {"id": None, "ok": False, "error": {
        "code": "request_too_large", "message": "request line longer than %d bytes" % MAX_LINE}}
    _expect_closed(c2)


def test_oversized_lines_are_refused_and_memory_stays_bounded(pyhotd):
    d = pyhotd({"m.py": "X = 1\n"})
    before = _rss_kib(d.proc.pid)
    # 16 connections, each pushing 16 MiB without a newline: 256 MiB offered in all.
    for _ in range(16):
        c = Client(d.socket)
        sender = _send_in_background(c.sock, b"x" * (16 * MIB))
        r = c.read_message()
        assert r["ok"] is False and r["error"]["code"] == "request_too_large", r
        _expect_closed(c)
        sender.join(TIMEOUT)
        assert not sender.is_alive(), "the daemon kept reading after the error"
        c.close()
    grown_mib = (_rss_kib(d.proc.pid) - before) / 1024
    # Unbounded, it would hold what was offered: 256 MiB. It holds at most 1 MiB of a line
    # per connection. (Under ASan, freed blocks sit in its quarantine: about 2 MiB each.)
    print("pyhotd grew by %.1f MiB after 256 MiB of oversized lines" % grown_mib)
    assert grown_mib < 16 * SCALE, "the daemon grew by %.1f MiB" % grown_mib
    st = d.conn.call("stats")["connections"]
    assert st["dropped_too_large"] == 16
    assert d.conn.call("ping")["pong"] is True


# ---- connections -----------------------------------------------------------------------------

def test_max_clients_from_the_config(pyhotd):
    d = pyhotd({"m.py": "X = 1\n"}, config=_config(max_clients=3))
    first = d.client()
    # The fixture's own start-up connections may still be closing.
    wait_for(lambda: first.call("stats")["connections"]["open"] == 1, what="one connection")
    others = [d.client(), d.client()]
    for c in others:
        assert c.call("ping")["pong"] is True
    extra = Client(d.socket)
    r = extra.read_message()
    assert r["ok"] is False and r["error"]["code"] == "too_many_clients", r
    assert "3" in r["error"]["message"]
    _expect_closed(extra)
    extra.close()
    # Everyone admitted is still served; a slot freed is given to the next one.
    assert all(c.call("ping")["pong"] for c in [first] + others)
    assert first.call("stats")["connections"]["refused_too_many"] == 1
    others[0].close()

    def admitted():
        with Client(d.socket) as c:
            c.send("ping")
            return c.response().get("ok") is True
    wait_for(admitted, what="the freed slot")


# ---- slow consumers ----------------------------------------------------------------------------

BIG_ERROR = "X = 2\nraise RuntimeError('x' * 20000)\n"


def test_slow_subscriber_is_dropped_with_an_overflow_notice(pyhotd):
    """Two subscribers stop reading; one reads again after being dropped, one never does.
    The daemon queues at most max_output_bytes for each (plus the notice), then drops
    them; a third subscriber that reads, and plain clients, are not affected."""
    d = pyhotd({"big.py": "X = 1\n"}, config=_config(max_output_bytes=65536))
    late_reader = d.client()
    late_reader.subscribe()
    never_reader = d.client()
    never_reader.subscribe()
    reader = d.subscriber()
    requester = d.client()
    first_seq = requester.call("history", n=0)["seq"] + 1

    write(d.path("big.py"), BIG_ERROR)
    assert reader.wait_batch(d.path("big.py"))[0]["result"] == "rolled_back"
    # Each failed reload sends ~40 KB of events (the error twice) to each subscriber.
    rounds = 0
    while requester.call("stats")["connections"]["dropped_overflow"] < 2:
        rounds += 1
        assert rounds < 200, "no subscriber was dropped after %d rounds" % rounds
        r = requester.request("reload", targets=["big"])
        assert r["error"]["code"] == "reload_failed", r
        reader.next_event("batch")

    lines = _read_until_closed(late_reader)
    notice = lines[-1]
    assert notice["event"] == "overflow", notice
    assert notice["limit_bytes"] == 65536 and notice["queued_bytes"] > 0
    assert "seq" not in notice and notice["message"]
    events = lines[:-1]
    # Everything queued before the notice arrived, in order, without gaps.
    assert [e["seq"] for e in events] == list(range(first_seq, first_seq + len(events)))
    assert len(events) < 2 * (rounds + 1)                         # it missed the rest

    # The one that never reads is closed anyway, after a grace period.
    wait_for(lambda: requester.call("stats")["connections"]["open"] == 2,
             what="the daemon to close the subscriber that never reads")
    assert requester.call("status")["subscribers"] == 1
    # The reading subscriber got every event and is still subscribed.
    seqs = [e["seq"] for e in reader.seen]
    assert seqs == list(range(first_seq, first_seq + len(seqs)))
    assert len(seqs) == 2 + 2 * rounds
    write(d.path("big.py"), "X = 3\n")
    assert reader.wait_batch(d.path("big.py"))[0]["result"] == "ok"
    assert requester.call("ping")["pong"] is True
    assert requester.call("stats")["connections"]["dropped_overflow"] == 2


def test_a_large_reply_to_an_empty_queue_is_sent(pyhotd):
    """The cap is on the backlog of a client that does not read: one reply larger than
    max_output_bytes still goes to a client that reads it."""
    d = pyhotd({"m.py": "X = 1\n"}, config=_config(max_output_bytes=65536))
    r = d.conn.call("exec", code="print('y' * 300000)")
    assert r["stdout"] == "y" * 300000 + "\n"


# ---- unfinished requests ---------------------------------------------------------------------

def test_unfinished_request_is_closed_after_the_timeout(pyhotd):
    d = pyhotd({"m.py": "X = 1\n"}, config=_config(request_timeout_ms=300))
    idle = d.client()
    assert idle.call("ping")["pong"] is True
    half = d.client()
    half.send_raw(b'{"id": 1, "cmd": "sta')
    r = half.read_message()
    assert r["ok"] is False and r["id"] is None, r
    assert r["error"]["code"] == "request_timeout" and "300 ms" in r["error"]["message"], r
    _expect_closed(half)
    # A connection that sent nothing unfinished may stay as long as it likes.
    time.sleep(0.6)
    assert idle.call("ping")["pong"] is True
    assert idle.call("stats")["connections"]["dropped_timeout"] == 1


def test_requests_sent_in_pieces_within_the_timeout_are_served(pyhotd):
    d = pyhotd({"m.py": "X = 1\n"}, config=_config(request_timeout_ms=2000))
    c = d.client()
    for part in (b'{"id": 7,', b' "cmd": ', b'"ping"}', b"\n"):
        c.send_raw(part)
        time.sleep(0.05)
    assert c.response(7)["ok"] is True


# ---- EMFILE ------------------------------------------------------------------------------------

def _free_fds_below_limit(pid, n):
    """The limit that leaves exactly n descriptor numbers free in process pid."""
    used = {int(x) for x in os.listdir("/proc/%d/fd" % pid)}
    free = []
    fd = 0
    while len(free) <= n:
        if fd not in used:
            free.append(fd)
        fd += 1
    return free[n]     # numbers below it: all used but free[0..n-1]


def test_emfile_pauses_accepting_instead_of_spinning(pyhotd):
    d = pyhotd({"m.py": "X = 1\n"})
    pid = d.proc.pid
    keep = d.client()
    assert keep.call("ping")["pong"] is True
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (_free_fds_below_limit(pid, 1), hard))
    try:
        admitted = Client(d.socket)
        assert admitted.request("ping")["ok"] is True      # took the last descriptor
        waiting = Client(d.socket)                          # connect() succeeds: the backlog
        waiting.send("ping")
        ready, _, _ = select.select([waiting.sock], [], [], QUIET)
        assert not ready, "a connection past the descriptor limit was answered"
        # Every CONTROL_ACCEPT_PAUSE_MS the daemon tries accept(2) again and pauses again: a
        # stats request served in that loop turn, before the listener's, sees it resumed.
        st = wait_for(lambda: (lambda c: c["accept_paused"] and c)(keep.call("stats")["connections"]),
                      what="accepting paused")
        assert st["accept_pauses"] >= 1, st

        cpu_before, wall_before = _cpu_seconds(pid), time.monotonic()
        time.sleep(1.0)
        cpu = _cpu_seconds(pid) - cpu_before
        wall = time.monotonic() - wall_before
        assert cpu < 0.3 * wall, "pyhotd used %.2f s of CPU in %.2f s while paused" % (cpu, wall)

        # A descriptor comes free: the waiting peer is accepted and answered. (Accepting
        # pauses again right after: accept(2) fails with EMFILE before it looks at the
        # backlog, and the last descriptor is taken again.)
        admitted.close()
        assert waiting.response()["result"]["pong"] is True
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    assert "pausing accept" in d.log()
    with Client(d.socket) as c:
        assert c.request("ping")["ok"] is True


# ---- the event history ---------------------------------------------------------------------

# A reload that fails with a 48 KiB message: unbounded, its reload and batch events carry
# the message and the traceback (which repeats it): about 200 KB of events per failure.
HUGE_ERROR = "X = 2\nraise RuntimeError('x' * 49152)\n"


def test_memory_stays_bounded_under_a_flood_of_large_events(pyhotd):
    """300 reloads fail with a 48 KiB message each while one subscriber never reads: the
    daemon stays under its start RSS + 64 MiB (the history is bounded in bytes, error
    texts are capped), drops the stuck subscriber, and keeps serving a reading subscriber
    and new clients."""
    env = None
    if SANITIZED:
        # ASan keeps freed blocks in a quarantine (256 MiB by default): keep it small, so
        # that what is measured is what the daemon holds.
        env = {"ASAN_OPTIONS": ":".join(filter(None, [os.environ.get("ASAN_OPTIONS"),
                                                      "quarantine_size_mb=16"]))}
    d = pyhotd({"big.py": "X = 1\n"}, env=env)
    requester = d.client()
    start_kib = _rss_kib(d.proc.pid)
    never_reader = d.client()
    never_reader.subscribe()
    reader = d.subscriber()

    write(d.path("big.py"), HUGE_ERROR)
    assert reader.wait_batch(d.path("big.py"))[0]["result"] == "rolled_back"
    peak_kib = start_kib
    for i in range(300):
        r = requester.request("reload", targets=["big"])
        assert r["ok"] is False and r["error"]["code"] == "reload_failed", r
        batch = reader.next_event("batch")
        error = batch["error"]
        assert error["type"] == "RuntimeError" and error["truncated"] is True, error
        assert 8192 <= len(error["message"]) < 8300 and "characters cut" in error["message"]
        assert len(error["traceback"]) < 16500
        assert error["traceback"].rstrip().endswith("x"), error["traceback"][-200:]
        if i % 25 == 0:
            with Client(d.socket) as newcomer:
                assert newcomer.call("status")["ready"] is True
            peak_kib = max(peak_kib, _rss_kib(d.proc.pid))
    peak_kib = max(peak_kib, _rss_kib(d.proc.pid))
    grown_mib = (peak_kib - start_kib) / 1024
    print("pyhotd: start RSS %.1f MiB, peak %.1f MiB (+%.1f MiB) over 300 failed reloads" %
          (start_kib / 1024, peak_kib / 1024, grown_mib))
    assert grown_mib < 64, "the daemon grew by %.1f MiB" % grown_mib

    stats = requester.call("stats")
    assert stats["connections"]["dropped_overflow"] == 1, stats["connections"]
    wait_for(lambda: requester.call("status")["subscribers"] == 1,
             what="the daemon to close the subscriber that never reads")
    # The reading subscriber missed nothing; the history holds the newest events only.
    batches = [e for e in reader.seen if e["event"] == "batch"]
    assert len(batches) == 301
    history = requester.call("history", n=1000)
    assert 0 < len(history["events"]) < 1000
    assert history["events"][-1]["seq"] == reader.seen[-1]["seq"]
    write(d.path("big.py"), "X = 3\n")
    assert reader.wait_batch(d.path("big.py"))[0]["result"] == "ok"
