"""pyhotd as a service: sd_notify sequence and watchdog, SIGHUP configuration reload,
virtual environments, and the installed tree with its systemd units."""

import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import BIN, SCALE, TIMEOUT, run, wait_for

# These tests count how often a module's top level runs (a reload each): whole-module
# reloads. test_reload_definitions.py covers the default, definition-level mode.
pytestmark = pytest.mark.reload_mode("module")

CONFIG = """\
[daemon]
socket = {socket}
log_level = debug
[watch]
root = {roots}
settle_ms = {settle}
import = all
"""


class NotifyListener:
    """The NOTIFY_SOCKET end of sd_notify(3): a datagram socket whose messages a thread
    collects as they come, as systemd does. (A receiver that stops reading would fill the
    socket's queue, net.unix.max_dgram_qlen, and block the sender's next sd_notify.)"""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.05)
        self.messages = []
        self.lock = threading.Lock()
        self.running = True
        self.thread = threading.Thread(target=self._collect, daemon=True)
        self.thread.start()

    def _collect(self):
        while self.running:
            try:
                data = self.sock.recv(4096).decode()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.messages.append(data)

    def drain(self, timeout=0.0):
        if timeout > 0:
            time.sleep(timeout)

    def all(self):
        with self.lock:
            return list(self.messages)

    def states(self):
        """The messages other than watchdog pings, in order."""
        return [m for m in self.all() if m != "WATCHDOG=1"]

    def wait_for(self, predicate, what):
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if predicate(self.states()):
                return self.states()
            time.sleep(0.02)
        raise AssertionError("timed out waiting for %s; got %r" % (what, self.all()))

    def close(self):
        self.running = False
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def notify(short_tmp):
    listener = NotifyListener(os.path.join(short_tmp, "notify.sock"))
    yield listener
    listener.close()


def test_notify_sequence_watchdog_and_sighup_reload(pyhotd, notify, tmp_path):
    second = tmp_path / "second_root"
    second.mkdir()
    (second / "extra_mod.py").write_text("E = 1\n")
    config = CONFIG.replace("{roots}", "{root}").replace("{settle}", "10")
    d = pyhotd({"first_mod.py": "F = 1\n"}, config=config,
               env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": str(200000)})
    notify.wait_for(lambda s: s[:1] == ["READY=1"], "READY=1")
    # The watchdog is pinged from the loop thread at half the interval (100 ms).
    wait_for(lambda: notify.all().count("WATCHDOG=1") >= 3, what="three watchdog pings")
    sub = d.subscriber()

    # SIGHUP with a changed file: the first root out, a second root in, settle changed.
    config_path = os.path.join(d.base, "pyhotd.conf")
    with open(config_path, "w") as f:
        f.write(CONFIG.format(socket=d.socket, roots=str(second), settle=25))
    d.proc.send_signal(signal.SIGHUP)
    event = sub.next_event("config_reloaded")
    assert "watch_roots" in event["changed"] and "settle_ms" in event["changed"], event
    states = notify.wait_for(lambda s: s.count("READY=1") >= 2, "RELOADING then READY")
    assert states[0] == "READY=1"
    assert states[1].startswith("RELOADING=1\nMONOTONIC_USEC="), states
    assert int(states[1].split("MONOTONIC_USEC=")[1]) > 0
    assert states[2] == "READY=1"
    status = d.status()
    assert [r["path"] for r in status["roots"]] == [os.path.realpath(str(second))], status
    assert status["settle_ms"] == 25
    # The new root's module was imported and its edits reload; the old root's do not.
    assert d.module_value("extra_mod", "E") == 1
    (second / "extra_mod.py").write_text("E = 2\n")
    batch, _ = sub.wait_batch(str(second / "extra_mod.py"))
    assert batch["result"] == "ok"
    assert d.module_value("extra_mod", "E") == 2
    d.write("first_mod.py", "F = 2\n")
    assert [e for e in sub.quiet() if e["event"] == "batch"] == []
    assert d.module_value("first_mod", "F") == 1

    # An invalid file is refused: the running configuration stays, and systemd hears READY.
    with open(config_path, "w") as f:
        f.write(CONFIG.format(socket=d.socket, roots=str(second), settle="lots"))
    d.proc.send_signal(signal.SIGHUP)
    event = sub.next_event("config_error")
    assert "settle_ms" in event["message"] and "pyhotd.conf:" in event["message"], event
    notify.wait_for(lambda s: s.count("READY=1") >= 3, "READY after a refused reload")
    assert [r["path"] for r in d.status()["roots"]] == [os.path.realpath(str(second))]
    assert d.alive()

    # SIGTERM: STOPPING=1, socket removed, exit 0.
    d.close_clients()
    assert d.terminate() == 0
    notify.drain(0.2)
    assert notify.states()[-1] == "STOPPING=1", notify.states()
    assert notify.states() == ["READY=1", notify.states()[1], "READY=1",
                               notify.states()[3], "READY=1", "STOPPING=1"]
    assert notify.states()[3].startswith("RELOADING=1\n")
    assert not os.path.exists(d.socket)


def test_no_watchdog_pings_without_watchdog_usec(pyhotd, notify):
    pyhotd({"m.py": "X = 1\n"}, env={"NOTIFY_SOCKET": notify.path})
    notify.wait_for(lambda s: s[:1] == ["READY=1"], "READY=1")
    time.sleep(0.3 * SCALE)
    assert "WATCHDOG=1" not in notify.all()


def test_venv_packages_import_as_in_the_venv(pyhotd, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True)
    site = venv / "lib" / "python3.11" / "site-packages"
    (site / "venvonly.py").write_text("WHERE = 'venv'\n")
    (site / "extra.pth").write_text(str(tmp_path / "pth_target") + "\n")
    (tmp_path / "pth_target").mkdir()
    (tmp_path / "pth_target" / "via_pth.py").write_text("OK = True\n")
    d = pyhotd({"app.py": "import venvonly, via_pth\n"},
               config="[daemon]\nsocket = {socket}\n[watch]\nroot = {root}\n[python]\nvenv = %s\n" % venv)
    assert d.module_value("venvonly", "WHERE") == "venv"
    assert d.module_value("via_pth", "OK") is True
    assert d.eval("__import__('sys').prefix") == os.path.realpath(str(venv))
    # Without include-system-site-packages, the system's site-packages are not on sys.path.
    assert d.eval("[p for p in __import__('sys').path if p.endswith('dist-packages')]") == []


def test_venv_for_another_python_is_refused(tmp_path):
    venv = tmp_path / "venv"
    (venv / "lib" / "python3.9" / "site-packages").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.9.2\n")
    cfg = tmp_path / "c.conf"
    cfg.write_text("[python]\nvenv = %s\n" % venv)
    r = run([os.path.join(BIN, "pyhotd"), "--config", str(cfg), "--check-config"])
    assert r.returncode == 2 and "python3.11" in r.stderr, r.stderr


def test_install_into_a_prefix_and_verify_units(tmp_path):
    build = os.path.dirname(BIN)
    prefix = tmp_path / "prefix"
    r = run(["cmake", "--install", build, "--prefix", str(prefix)], timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    files = sorted(os.path.relpath(os.path.join(dp, f), prefix)
                   for dp, _dirs, fs in os.walk(prefix) for f in fs)
    for expected in ["bin/pyhotd", "bin/pyhotctl", "etc/pyhot/pyhotd.conf",
                     "lib/systemd/system/pyhotd.service", "lib/systemd/system/pyhotd@.service",
                     "lib/systemd/user/pyhotd-user.service", "share/man/man8/pyhotd.8",
                     "share/doc/pyhot/README.md", "share/doc/pyhot/service.md",
                     "share/doc/pyhot/benchmarks.md"]:
        assert expected in files, (expected, files)
    # One configuration path, the install's, everywhere it is named: ExecStart, the units'
    # comments, the man page's FILES.
    conf_dir = "%s/etc/pyhot/" % prefix
    unit = (prefix / "lib/systemd/system/pyhotd.service").read_text()
    assert "ExecStart=%s/bin/pyhotd --config %spyhotd.conf" % (prefix, conf_dir) in unit
    assert "# Edit %spyhotd.conf" % conf_dir in unit
    instance_unit = (prefix / "lib/systemd/system/pyhotd@.service").read_text()
    assert "# %smyproject.conf" % conf_dir in instance_unit
    assert "--config %s%%i.conf" % conf_dir in instance_unit
    page = (prefix / "share/man/man8/pyhotd.8").read_text()
    assert ".I %spyhotd.conf" % conf_dir in page
    for text in (unit, instance_unit, page):
        assert "/etc/pyhot/" not in text.replace(conf_dir, ""), text
        assert "@" + "CMAKE" not in text
    # Templates are *.in, so every unit file in the source tree is a real unit.
    systemd_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "systemd")
    for name in os.listdir(systemd_dir):
        if name.endswith(".service"):
            assert "@" + "CMAKE" not in open(os.path.join(systemd_dir, name)).read(), name
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # The template is verified through an instance name, as systemd would load it.
    instance = tmp_path / "units" / "pyhotd@demo.service"
    instance.parent.mkdir()
    os.symlink(prefix / "lib/systemd/system/pyhotd@.service", instance)
    r = run(["systemd-analyze", "verify", "--man=no",
             str(prefix / "lib/systemd/system/pyhotd.service"),
             str(prefix / "lib/systemd/user/pyhotd-user.service"), str(instance)], timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_watch_error_after_a_root_was_removed(pyhotd, tmp_path):
    """A root removed by unwatch leaves an empty slot; a later watch_error of another root
    must still be reported (it once compared against the removed slot's NULL path)."""
    extra = tmp_path / "extra_root"
    extra.mkdir()
    d = pyhotd({"m.py": "X = 1\n"})
    d.conn.call("watch", path=str(extra))
    d.conn.call("unwatch", path=str(extra))
    sub = d.subscriber()
    missing = str(tmp_path / "not_there")
    reply = d.conn.request("watch", path=missing)
    assert reply["ok"] is False, reply
    gone = tmp_path / "gone_root"
    gone.mkdir()
    d.conn.call("watch", path=str(gone))
    gone.rmdir()
    event = sub.next_event("watch_error")
    assert event["root"] == str(gone) and event["lost"] is True, event
    assert d.alive()
