"""Ready children of isolated runs through the real binaries (docs/run.md "Ready
children"): a child forked from the warm interpreter before the request must never run a
request against the interpreter as it was before a job changed it, must not outlive the
daemon, and must show in status and metrics; prefork = 0 turns them off.

The ready children are found the way an operator would: processes whose parent is the
daemon (/proc/PID/stat), and the daemon's own counters (status "prefork").
"""

import os
import signal
import subprocess
import time

from conftest import PYHOTCTL, TIMEOUT, child_pids, clean_env, running, wait_for, write

APP = {"app_state.py": "VALUE = 'first'\n"}
PREFORK = 3   # [run] prefork's default: ready children per kind

# Prints the module's value as the run's interpreter has it, and its process id.
SHOW = "import os, app_state\nprint(app_state.VALUE, os.getpid())\n"


def run_isolated(d, path, *extra):
    r = subprocess.run([PYHOTCTL, "--socket", d.socket, "run", "--isolate"] + list(extra) + [path],
                       capture_output=True, text=True, timeout=TIMEOUT, env=clean_env())
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    value, pid = r.stdout.rsplit(None, 1)
    return value, int(pid)


def pool(d):
    return d.status()["prefork"]


def ready(d, kind="isolated", n=PREFORK):
    return wait_for(lambda: pool(d)["ready"][kind] == n and pool(d),
                    what="%d ready %s child(ren)" % (n, kind))


def test_a_run_is_handed_to_a_ready_child(pyhotd, tmp_path):
    d = pyhotd(modules=APP)
    show = write(tmp_path / "show.py", SHOW)
    assert pool(d) == {"ready": {"isolated": 0, "sandboxed": 0}, "hits": 0, "misses": 0, "retired": 0}
    assert run_isolated(d, show)[0] == "first"
    assert pool(d)["misses"] == 1 and pool(d)["hits"] == 0, pool(d)   # none was ready yet
    before = ready(d)
    waiting = child_pids(d.proc.pid, live=True)
    assert len(waiting) == PREFORK, waiting
    assert d.status()["runs"] == 0          # a ready child is not a run
    value, pid = run_isolated(d, show)
    assert value == "first" and pid in waiting, (pid, waiting)
    after = pool(d)
    assert after["hits"] == before["hits"] + 1 and after["misses"] == 1, after
    ready(d)                                 # refilled after the run
    text = d.conn.call("metrics")["text"]
    assert 'pyhot_prefork_runs_total{result="hit"} 1\n' in text, text
    assert 'pyhot_prefork_runs_total{result="miss"} 1\n' in text, text
    assert 'pyhot_prefork_ready{kind="isolated"} %d\n' % PREFORK in text, text
    ended = d.status()["runs_ended"]
    assert ended["total"] == 2 and ended["isolated"] == 2, ended


def test_a_run_after_a_reload_sees_the_new_code(pyhotd, tmp_path):
    d = pyhotd(modules=APP)
    show = write(tmp_path / "show.py", SHOW)
    run_isolated(d, show)
    stale = ready(d)
    stale_pid = child_pids(d.proc.pid, live=True)
    with d.subscriber() as sub:
        d.write("app_state.py", "VALUE = 'second'\n")
        batch = sub.next_event(lambda e: e["event"] == "batch")
        assert batch["result"] == "ok", batch
    # At once: the child forked before the reload is still there; it must not be used.
    value, pid = run_isolated(d, show)
    assert value == "second", value
    assert pid not in stale_pid, (pid, stale_pid)
    after = pool(d)
    assert after["retired"] > stale["retired"] and after["hits"] == stale["hits"], after
    wait_for(lambda: not any(running(p) for p in stale_pid), what="the stale child gone")
    ready(d)
    assert run_isolated(d, show)[0] == "second"
    assert pool(d)["hits"] == after["hits"] + 1


def test_a_run_after_exec_sees_what_exec_set(pyhotd, tmp_path):
    d = pyhotd(modules=APP)
    show = write(tmp_path / "show.py", SHOW)
    run_isolated(d, show)
    ready(d)
    d.exec("import app_state\napp_state.VALUE = 'set by exec'")
    assert run_isolated(d, show)[0] == "set by exec"
    # An in-process run changes the interpreter too: it may set what the next one reads.
    setter = write(tmp_path / "setter.py", "import app_state\napp_state.VALUE = 'set by a run'\n")
    r = subprocess.run([PYHOTCTL, "--socket", d.socket, "run", setter], capture_output=True,
                       text=True, timeout=TIMEOUT, env=clean_env())
    assert r.returncode == 0, r.stderr
    assert run_isolated(d, show)[0] == "set by a run"


def test_one_ready_child(pyhotd, tmp_path):
    d = pyhotd(modules=APP, config="[daemon]\nsocket = {socket}\n[watch]\nroot = {root}\n"
                                   "[run]\nprefork = 1\n")
    show = write(tmp_path / "show.py", SHOW)
    run_isolated(d, show)
    ready(d, n=1)
    time.sleep(0.3)                         # and no more
    assert pool(d)["ready"]["isolated"] == 1 and len(child_pids(d.proc.pid, live=True)) == 1
    run_isolated(d, show)
    assert pool(d)["hits"] == 1, pool(d)


def test_prefork_zero_keeps_no_child(pyhotd, tmp_path):
    d = pyhotd(modules=APP, config="[daemon]\nsocket = {socket}\n[watch]\nroot = {root}\n"
                                   "[run]\nprefork = 0\n")
    show = write(tmp_path / "show.py", SHOW)
    for _ in range(3):
        assert run_isolated(d, show)[0] == "first"
    time.sleep(0.3)                         # past the refill's quiet period
    assert pool(d) == {"ready": {"isolated": 0, "sandboxed": 0}, "hits": 0, "misses": 3,
                       "retired": 0}, pool(d)
    assert child_pids(d.proc.pid, live=True) == []


def test_prefork_is_range_checked(pyhotd, tmp_path):
    conf = write(tmp_path / "bad.conf", "[run]\nprefork = 17\n")
    r = subprocess.run([os.path.join(os.path.dirname(PYHOTCTL), "pyhotd"), "--config", conf,
                        "--check-config"], capture_output=True, text=True, env=clean_env())
    assert r.returncode == 2 and "prefork" in r.stderr, (r.returncode, r.stderr)


def test_a_ready_child_past_its_age_is_retired(pyhotd, tmp_path):
    d = pyhotd(modules=APP, config="[daemon]\nsocket = {socket}\n[watch]\nroot = {root}\n"
                                   "[run]\nprefork_max_age_ms = 300\n")
    show = write(tmp_path / "show.py", SHOW)
    run_isolated(d, show)
    first = ready(d)
    old = child_pids(d.proc.pid, live=True)
    # No run came within the age: the children go, and none replaces them.
    wait_for(lambda: pool(d)["retired"] >= first["retired"] + PREFORK and
             pool(d)["ready"]["isolated"] == 0, what="the children retired after 300 ms")
    time.sleep(0.5)
    assert pool(d)["ready"]["isolated"] == 0 and not any(running(p) for p in old)
    # The app's own threads change the interpreter between jobs: a child is at most that old.
    d.exec("import threading, app_state\n"
           "threading.Thread(target=lambda: setattr(app_state, 'VALUE', 'from a thread')).start()")
    time.sleep(0.5)
    assert run_isolated(d, show)[0] == "from a thread"


def test_no_refill_after_a_reload_until_a_run_asks(pyhotd, tmp_path):
    # A ready child shares the daemon's pages: while one lives, each page a reload writes is
    # copied. After a reload the pool stays empty until the next run of its kind.
    d = pyhotd(modules=APP)
    show = write(tmp_path / "show.py", SHOW)
    run_isolated(d, show)
    stale = child_pids(d.proc.pid, live=True) if ready(d) else []
    with d.subscriber() as sub:
        d.write("app_state.py", "VALUE = 'second'\n")
        assert sub.next_event(lambda e: e["event"] == "batch")["result"] == "ok"
    wait_for(lambda: pool(d)["ready"]["isolated"] == 0 and not any(running(p) for p in stale),
             what="the stale children retired")
    time.sleep(0.5)                          # past the refill's quiet period
    assert pool(d)["ready"]["isolated"] == 0, pool(d)
    assert child_pids(d.proc.pid, live=True) == []
    misses = pool(d)["misses"]
    assert run_isolated(d, show)[0] == "second"
    assert pool(d)["misses"] == misses + 1
    ready(d)                                 # the run asked: the pool fills again


def _start_pool(d, tmp_path):
    show = write(tmp_path / "show.py", SHOW)
    run_isolated(d, show)
    ready(d)
    pids = child_pids(d.proc.pid, live=True)
    assert len(pids) == PREFORK, pids
    return pids


def test_no_ready_child_survives_the_daemons_stop(pyhotd, tmp_path):
    d = pyhotd(modules=APP)
    pids = _start_pool(d, tmp_path)
    assert d.shutdown() == 0
    assert not any(os.path.exists("/proc/%d" % p) for p in pids), pids  # killed and reaped


def test_no_ready_child_survives_a_killed_daemon(pyhotd, tmp_path):
    d = pyhotd(modules=APP)
    pids = _start_pool(d, tmp_path)
    d.expect_clean_exit = False
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(TIMEOUT)
    wait_for(lambda: not any(running(p) for p in pids), what="the ready child dead with the daemon")


def test_a_configuration_reload_resizes_the_pool(pyhotd, tmp_path):
    """SIGHUP with [run] prefork = 0 retires the ready children at once (no run needed)."""
    d = pyhotd(modules=APP, config="[daemon]\nsocket = {socket}\n[watch]\nroot = {root}\n")
    pids = _start_pool(d, tmp_path)
    cfg = os.path.join(d.base, "pyhotd.conf")
    with open(cfg) as f:
        text = f.read()
    write(cfg, text + "\n[run]\nprefork = 0\n")
    with d.subscriber() as sub:
        d.proc.send_signal(signal.SIGHUP)
        event = sub.next_event(lambda e: e["event"] == "config_reloaded")
        assert "prefork" in event["changed"], event
    wait_for(lambda: pool(d)["ready"]["isolated"] == 0, what="the pool emptied")
    wait_for(lambda: not any(running(p) for p in pids), what="the ready children gone")
    show = write(tmp_path / "show2.py", SHOW)
    assert run_isolated(d, show)[0] == "first"
    time.sleep(0.3)
    assert pool(d)["ready"]["isolated"] == 0, pool(d)


def test_ready_children_wait_at_idle_priority_and_runs_run_at_normal(pyhotd, tmp_path):
    """A ready child waits as SCHED_IDLE (a daemon that may leave it: root here), so that
    its preparation never keeps the daemon's threads from a CPU; the run itself, script
    included, is SCHED_OTHER again (docs/run.md "Ready children")."""
    d = pyhotd(modules=APP)
    policy = write(tmp_path / "policy.py", "import os\nprint(os.sched_getscheduler(0), os.getpid())\n")
    waiting_policy = os.SCHED_IDLE if os.geteuid() == 0 else os.SCHED_BATCH
    run_isolated(d, policy)
    ready(d)
    waiting = child_pids(d.proc.pid, live=True)
    assert len(waiting) == PREFORK, waiting
    wait_for(lambda: all(os.sched_getscheduler(p) == waiting_policy for p in waiting),
             what="the ready children's waiting policy")
    value, pid = run_isolated(d, policy)
    assert int(value) == os.SCHED_OTHER and pid in waiting, (value, pid, waiting)
