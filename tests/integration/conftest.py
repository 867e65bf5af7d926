"""Fixtures of the integration suite: the real pyhotd and pyhotctl on temporary dirs.

Everything here talks to the daemon the way a user's tools do: real inotify on a temporary
watch root, the real Unix socket (newline-delimited JSON), the real embedded interpreter.

- `pyhotd` is a factory fixture: pyhotd(modules={...}, args=[...]) writes the modules into a
  fresh watch root, starts the daemon on a socket in a fresh 0700 directory, waits until it
  answers and has finished its start-up imports, and stops it at teardown (shutdown over
  the socket; asserts exit code 0 and that the socket file is gone).
- `Client` speaks the protocol: request(cmd, **args), subscribe(), next_event(predicate).
- Waits are event-driven (the batch event of an edit), never bare sleeps; every timeout is
  generous and scaled by 3 under the sanitizers (PYHOT_SANITIZED=1).
- When a test fails, the stderr of every daemon it started is attached to the report.
"""

import ast
import collections
import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("PYHOT_BIN") or os.path.join(REPO, "build", "bin")
PYHOTD = os.path.join(BIN, "pyhotd")
PYHOTCTL = os.path.join(BIN, "pyhotctl")

SANITIZED = os.environ.get("PYHOT_SANITIZED", "") not in ("", "0")
SCALE = 3 if SANITIZED else 1
TIMEOUT = 10.0 * SCALE   # the longest we wait for anything that must happen
QUIET = 0.4 * SCALE      # how long we watch for something that must NOT happen


def inotify_watch_fields(pid):
    """One dict per inotify watch the process holds, the kernel's fields as hex strings
    (wd, ino, sdev, mask, ...: /proc/PID/fdinfo, proc(5))."""
    watches = []
    fd_dir = "/proc/%d/fd" % pid
    for fd in os.listdir(fd_dir):
        try:
            if os.readlink(os.path.join(fd_dir, fd)) != "anon_inode:inotify":
                continue
            with open("/proc/%d/fdinfo/%s" % (pid, fd)) as f:
                for line in f:
                    if line.startswith("inotify wd:"):
                        watches.append(dict(kv.split(":", 1) for kv in line.split()[1:]))
        except OSError:
            continue
    return watches


def child_pids(pid, live=False):
    """Process ids whose parent is pid: zombies included, or only those still running when
    live (/proc/PID/stat, proc(5))."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                fields = f.read().rsplit(") ", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid and not (live and fields[0] == "Z"):
            found.append(int(entry))
    return found


def running(pid):
    """Whether pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def proc_status(pid, name):
    """The value of field name in /proc/PID/status (proc(5)), as text ("2", "123 kB")."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    raise AssertionError("no %s in /proc/%d/status" % (name, pid))


def wait_for(predicate, timeout=TIMEOUT, interval=0.02, what="condition"):
    """Polls predicate until it returns a true value (returned) or timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1f s waiting for %s" % (timeout, what))
        time.sleep(interval)


def write(path, text, mode=0o644):
    """Writes a file the way an editor without atomic save does: open, truncate, write."""
    path = str(path)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def clean_env(**extra):
    """The environment for the binaries: ours without PYHOT_SOCKET, plus extra (a value
    of None removes that variable)."""
    env = dict(os.environ)
    env.pop("PYHOT_SOCKET", None)
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)    # None removes a variable
        else:
            env[k] = v
    return env


# ---- the protocol --------------------------------------------------------------------------

class Closed(Exception):
    """The daemon closed the connection."""


class Client:
    """One connection to the control socket.

    Lines that carry "event" are events (after subscribe): they are queued, in arrival
    order, and every one received is also kept in `seen`. Other lines are responses.
    """

    def __init__(self, path, timeout=TIMEOUT):
        self.path = path
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.events = collections.deque()
        self.seen = []
        self.next_id = 0
        self.closed = False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- raw lines
    def send_raw(self, data):
        self.sock.sendall(data)

    def read_raw_line(self, timeout=None):
        """The next line as bytes (without "\\n"); raises Closed at EOF, TimeoutError."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no line from pyhotd within %.1f s" %
                                   (self.timeout if timeout is None else timeout))
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                continue
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                self.closed = True
                raise Closed("pyhotd closed the connection (pending: %r)" % self.buf[:200])
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def read_message(self, timeout=None):
        line = self.read_raw_line(timeout)
        try:
            return json.loads(line)
        except ValueError:
            raise AssertionError("pyhotd sent a line that is not JSON: %r" % line[:500])

    # -- requests
    def send(self, cmd, **args):
        self.next_id += 1
        message = {"id": self.next_id, "cmd": cmd}
        message.update(args)
        self.send_raw(json.dumps(message).encode() + b"\n")
        return self.next_id

    def response(self, request_id=None, timeout=None):
        """The next response (events read meanwhile are queued); with request_id, the
        response must carry that id."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            message = self.read_message(max(0.0, deadline - time.monotonic()))
            if isinstance(message, dict) and "event" in message and "ok" not in message:
                self.events.append(message)
                self.seen.append(message)
                continue
            if request_id is not None:
                assert message.get("id") == request_id, \
                    "response for id %r, expected id %r: %r" % (message.get("id"), request_id, message)
            return message

    def request(self, cmd, timeout=None, **args):
        """Sends one request and returns the whole response object."""
        return self.response(self.send(cmd, **args), timeout)

    def call(self, cmd, timeout=None, **args):
        """request() that must succeed; returns its result."""
        reply = self.request(cmd, timeout=timeout, **args)
        assert reply.get("ok") is True, "%s failed: %r" % (cmd, reply)
        return reply["result"]

    def subscribe(self):
        result = self.call("subscribe")
        assert result["subscribed"] is True
        return result

    # -- events
    def next_event(self, predicate=None, timeout=None):
        """The next event matching predicate (a callable, or an event name); events that
        do not match are consumed (they stay in `seen`)."""
        if isinstance(predicate, str):
            name = predicate
            predicate = lambda e: e["event"] == name  # noqa: E731
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            while self.events:
                event = self.events.popleft()
                if predicate is None or predicate(event):
                    return event
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no matching event within %.1f s; seen: %s" % (
                    self.timeout if timeout is None else timeout,
                    json.dumps(self.seen[-10:], indent=1)))
            try:
                message = self.read_message(left)
            except TimeoutError:
                continue
            assert "event" in message, "a response arrived while waiting for events: %r" % message
            self.events.append(message)
            self.seen.append(message)

    def events_until(self, predicate, timeout=None):
        """Every event up to and including the first that matches predicate."""
        start = len(self.seen) - len(self.events)
        self.next_event(predicate, timeout)
        end = len(self.seen) - len(self.events)
        return self.seen[start:end]

    def quiet(self, window=QUIET):
        """The events that arrive within window seconds (expected: none)."""
        got = list(self.events)
        self.events.clear()
        deadline = time.monotonic() + window
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return got
            try:
                message = self.read_message(left)
            except TimeoutError:
                return got
            self.seen.append(message)
            got.append(message)

    def wait_batch(self, path=None, timeout=None):
        """Waits for the batch event whose paths contain path (any batch when None);
        returns (batch_event, [reload events of that batch])."""
        path = os.path.realpath(path) if path else None
        events = self.events_until(
            lambda e: e["event"] == "batch" and (path is None or path in e["paths"]), timeout)
        batch = events[-1]
        reloads = [e for e in events if e["event"] == "reload" and e.get("batch") == batch["batch"]]
        return batch, reloads


# ---- the daemon ------------------------------------------------------------------------------

class Daemon:
    def __init__(self, root, roots, sockdir, socket_path, log_path, argv, proc, base):
        self.root = root            # the first watch root (realpath)
        self.roots = roots
        self.sockdir = sockdir
        self.socket = socket_path
        self.log_path = log_path
        self.argv = argv
        self.proc = proc
        self.base = base            # the test's temporary directory
        self.clients = []
        self._exec_client = None
        self.expect_clean_exit = True

    # -- files
    def path(self, rel, root=None):
        return os.path.join(root or self.root, rel)

    def write(self, rel, text, root=None):
        path = self.path(rel, root)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return write(path, text)

    # -- talking
    def client(self, timeout=TIMEOUT):
        c = Client(self.socket, timeout)
        self.clients.append(c)
        return c

    def subscriber(self):
        c = self.client()
        c.subscribe()
        return c

    @property
    def conn(self):
        if self._exec_client is None or self._exec_client.closed:
            self._exec_client = self.client()
        return self._exec_client

    def exec(self, code, timeout=None):
        """Runs code in the daemon's interpreter; returns the result (must succeed)."""
        return self.conn.call("exec", timeout=timeout, code=code)

    def eval(self, expr, setup=None):
        """The value of a Python expression in the daemon, as a Python value (the repr the
        daemon returns is literal_eval'ed). setup (statements) runs first."""
        if setup:
            self.exec(setup)
        result = self.exec(expr)
        assert result["value"] is not None, "expression %r gave no value: %r" % (expr, result)
        return ast.literal_eval(result["value"])

    def module_value(self, module, attr):
        return self.eval("__import__('sys').modules[%r].%s" % (module, attr))

    def status(self):
        return self.conn.call("status")

    @contextlib.contextmanager
    def one_batch(self, n_paths):
        """Writes made inside go out as one batch: the watcher is paused until all
        n_paths are pending, then resumed. (The adaptive settle sends a finished write at
        once, so two writes in a row are two batches unless held together.)"""
        self.conn.call("pause")
        yield
        wait_for(lambda: self.status()["watch"]["pending"] >= n_paths,
                 what="%d paths pending" % n_paths)
        self.conn.call("resume")

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    # -- lifetime
    def alive(self):
        return self.proc.poll() is None

    def wait_exit(self, timeout=TIMEOUT):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("pyhotd did not exit within %.1f s; killed it.\n%s" %
                                 (timeout, self.log()))

    def shutdown(self):
        """Stops the daemon with the shutdown command; returns the exit code."""
        with Client(self.socket) as c:
            reply = c.request("shutdown")
            assert reply == {"id": 1, "ok": True, "result": {"stopping": True}}, reply
        return self.wait_exit()

    def terminate(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        return self.wait_exit()

    def ready_or_exited(self, timeout=TIMEOUT):
        """Waits until the daemon is ready (True) or has exited (False)."""
        try:
            self.ready_status = _wait_ready(self, timeout)
            return True
        except AssertionError:
            if self.proc.poll() is not None:
                return False
            raise

    def close_clients(self):
        for c in self.clients:
            c.close()
        self.clients = []
        self._exec_client = None


def _wait_ready(d, timeout):
    """Until ping answers, then until the start-up imports are done (status.ready)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if not d.alive():
            raise AssertionError("pyhotd exited with %s during start-up:\n%s" %
                                 (d.proc.returncode, d.log()))
        try:
            with Client(d.socket, timeout=max(0.5, deadline - time.monotonic())) as c:
                reply = c.request("ping")
                assert reply.get("ok") is True, reply
                while time.monotonic() < deadline:
                    status = c.call("status")
                    if status.get("ready"):
                        return status
                    time.sleep(0.02)
        except (OSError, Closed, TimeoutError) as exc:
            last = exc
        time.sleep(0.02)
    raise AssertionError("pyhotd did not become ready within %.1f s (%r):\n%s" %
                         (timeout, last, d.log()))


@pytest.fixture
def short_tmp():
    """A private directory with a short path (sun_path holds 108 bytes; tmp_path can be
    longer): sockets live here. Removed after the daemons are stopped."""
    path = tempfile.mkdtemp(prefix="pyhot-it-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pyhotd(request, tmp_path, short_tmp):
    """Factory: pyhotd(modules=None, args=(), roots=1, config=None, socket_path=None,
    ready=True, env=None, watch=True, log_level="debug", prepare=None, cwd=None,
    import_all=True, mode=None) -> Daemon.

    modules maps relative paths to sources ("pkg/mod.py": "..."), written into the first
    root before the daemon starts. args are extra command-line arguments. config (text)
    is written to a file passed with --config; its "{root}" and "{socket}" are replaced.
    prepare(root) runs after the modules are written, before the daemon starts. The daemon
    runs in the test's directory for that daemon (base), or in cwd.

    [watch] import = all is added to config (or, without config, is the whole of a small
    file): the suite's modules are live at start without an `import` of each.
    import_all=False keeps pyhotd's default, on-demand. mode adds [reload] mode; a test
    file marked `pytestmark = pytest.mark.reload_mode("module")` sets it for its tests.
    """
    started = []
    request.node._pyhot_daemons = started

    def start(modules=None, args=(), roots=1, config=None, socket_path=None, ready=True,
              env=None, watch=True, log_level="debug", prepare=None, cwd=None,
              import_all=True, mode=None):
        if mode is None:
            marker = request.node.get_closest_marker("reload_mode")
            mode = marker.args[0] if marker else None
        n = len(started)
        base = tmp_path / ("d%d" % n)
        base.mkdir()
        root_paths = []
        for i in range(roots):
            r = base / ("app" if i == 0 else "app%d" % (i + 1))
            r.mkdir()
            root_paths.append(os.path.realpath(str(r)))
        for rel, text in (modules or {}).items():
            path = os.path.join(root_paths[0], rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write(path, text)
        if prepare is not None:
            prepare(root_paths[0])
        if socket_path is None:
            sockdir = os.path.join(short_tmp, "s%d" % n)
            os.mkdir(sockdir, 0o700)
            socket_path = os.path.join(sockdir, "pyhotd.sock")
        log_path = str(base / "pyhotd.stderr")
        argv = [PYHOTD]
        if config is not None:
            if import_all and "import =" not in config:
                config = (config.replace("[watch]\n", "[watch]\nimport = all\n", 1)
                          if "[watch]\n" in config else config + "\n[watch]\nimport = all\n")
            if mode:
                config += "\n[reload]\nmode = %s\n" % mode
            cfg = base / "pyhotd.conf"
            cfg.write_text(config.replace("{root}", root_paths[0]).replace("{socket}", socket_path))
            argv += ["--config", str(cfg)]
        else:
            lines = (["[watch]", "import = all"] if import_all else []) + \
                (["[reload]", "mode = %s" % mode] if mode else [])
            if lines:
                cfg = base / "pyhotd.conf"
                cfg.write_text("\n".join(lines) + "\n")
                argv += ["--config", str(cfg)]
            argv += ["--socket", socket_path]
            if watch:
                for r in root_paths:
                    argv += ["--watch", r]
        if log_level:
            argv += ["--log-level", log_level]
        argv += list(args)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    cwd=cwd or str(base), env=clean_env(**(env or {})))
        d = Daemon(root_paths[0] if root_paths else None, root_paths, os.path.dirname(socket_path),
                   socket_path, log_path, argv, proc, str(base))
        started.append(d)
        if ready:
            d.ready_status = _wait_ready(d, TIMEOUT)
        return d

    yield start

    problems = []
    for d in started:
        d.close_clients()
        if d.alive():
            try:
                code = d.shutdown()
            except Exception as exc:  # noqa: BLE001 - fall back to SIGTERM, then kill
                problems.append("shutdown over the socket failed: %r" % exc)
                try:
                    code = d.terminate()
                except AssertionError as e:
                    problems.append(str(e))
                    continue
            if d.expect_clean_exit:
                if code != 0:
                    problems.append("pyhotd exited with %s at teardown:\n%s" % (code, d.log()))
                if os.path.exists(d.socket):
                    problems.append("pyhotd left its socket %s behind" % d.socket)
    assert not problems, "\n".join(problems)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for i, d in enumerate(getattr(item, "_pyhot_daemons", [])):
            report.sections.append(("pyhotd #%d stderr (%s)" % (i, " ".join(d.argv)), d.log()[-20000:]))


# ---- one-shot runs ---------------------------------------------------------------------------

def run(argv, timeout=TIMEOUT, input=None, env=None, cwd=None):
    """Runs a binary to completion; returns CompletedProcess with text stdout/stderr."""
    return subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout,
                          env=clean_env(**(env or {})) if env is not False else clean_env(),
                          cwd=cwd)


@pytest.fixture
def pyhotctl():
    """pyhotctl(*args, socket=None, input=None, env=None) -> CompletedProcess."""
    if not os.access(PYHOTCTL, os.X_OK):
        pytest.fail("pyhotctl not built: %s" % PYHOTCTL)

    def ctl(*args, socket=None, input=None, env=None, timeout=TIMEOUT):
        argv = [PYHOTCTL]
        if socket is not None:
            argv += ["--socket", socket]
        return run(argv + list(args), timeout=timeout, input=input, env=env)
    return ctl


def pytest_report_header(config):
    return "pyhot binaries: %s%s" % (BIN, " (sanitized: timeouts x%d)" % SCALE if SANITIZED else "")


def pytest_configure(config):
    config.addinivalue_line("markers", "reload_mode(mode): [reload] mode of the daemons a test starts")


def pytest_sessionstart(session):
    if not os.access(PYHOTD, os.X_OK):
        raise pytest.UsageError("pyhotd not found at %s: build first (cmake --build build) "
                                "or set PYHOT_BIN" % PYHOTD)


def read_lines_until(proc, predicate, timeout=TIMEOUT):
    """Reads lines of a running binary's stdout (a pipe) until predicate(line) holds;
    returns every line read. Raises AssertionError after timeout seconds."""
    lines = []
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, _, buf = buf.partition(b"\n")
            lines.append(line.decode())
            if predicate(lines[-1]):
                return lines
    raise AssertionError("no matching line on stdout within %.1f s: %r" % (timeout, lines))


def leave_console(pid, fd, timeout=TIMEOUT):
    """Types Ctrl-D on the pty fd until the console (pid) leaves; returns its wait status.
    Once is not always enough: a Ctrl-D typed while the terminal is still in canonical
    mode (before libedit sets it up for the next line) is queued as an end-of-file mark,
    which the kernel hands over as a NUL byte once the terminal leaves canonical mode; the
    line is then not empty and Ctrl-D only beeps. Ctrl-U first empties the line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        os.write(fd, b"\x15\x04")
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.2)
    raise AssertionError("the console did not leave on Ctrl-D")


def reap(pid):
    """Kills and reaps pid if it still runs, so that a failed test leaves no process."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def exec_in_thread(d, code):
    """Sends exec code from a thread of its own (a client with a long timeout): (thread,
    box), box getting "reply" or "exception", and "elapsed" seconds."""
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


# ---- framework apps (tests/integration/test_framework_*.py) ----------------------------------

def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Straight to 127.0.0.1: an http_proxy of the environment must not see the tests' requests.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# The models module the Flask, FastAPI and aiohttp test apps share: a plain class whose
# method an edit changes, and the state (STORE) a reload must keep.
ITEM_MODELS = """\
class Item:
    def __init__(self, name, price):
        self.name = name
        self.price = price

    def label(self):
        return "%s costs %d" % (self.name, self.price)


STORE = {"hits": 0, "items": [Item("tea", 3)]}
"""


def http_get(port, path, timeout=5.0 * SCALE):
    """(status, body) of GET http://127.0.0.1:port/path; (None, reason) when nothing
    answers there."""
    try:
        with _http.open("http://127.0.0.1:%d%s" % (port, path), timeout=timeout) as reply:
            return reply.status, reply.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        return None, repr(exc)


class WebApp:
    """A framework app served by pyhotd's --entry on 127.0.0.1:port, and a subscriber
    that sees the batches of its edits."""

    def __init__(self, daemon, port):
        self.daemon = daemon
        self.port = port
        self.sub = daemon.subscriber()

    def get(self, path):
        return http_get(self.port, path)

    def text(self, path):
        """The body of a 200 answer to GET path (anything else fails the test)."""
        status, body = self.get(path)
        assert status == 200, "GET %s answered %s: %s" % (path, status, body[-2000:])
        return body

    def edit(self, rel, text):
        """Writes rel (under the watch root) and returns (batch, reloads) of its batch."""
        return self.sub.wait_batch(self.daemon.write(rel, text))

    def edit_ok(self, rel, text):
        """edit() whose batch must apply."""
        batch, reloads = self.edit(rel, text)
        assert batch["result"] == "ok", "the batch of %s did not apply:\n%s" % (
            rel, json.dumps([batch] + reloads, indent=1)[-6000:])
        return batch, reloads


@pytest.fixture
def web_app(pyhotd):
    """Factory: web_app(modules, entry="app:main", ready_path="/", args=(), config=None,
    env=None) -> WebApp. The app finds its port in $PYHOT_TEST_PORT; start returns once
    GET ready_path gets any HTTP answer."""

    def start(modules, entry="app:main", ready_path="/", args=(), config=None, env=None):
        port = free_port()
        environment = {"PYHOT_TEST_PORT": str(port)}
        environment.update(env or {})
        d = pyhotd(modules, args=["--entry", entry] + list(args), config=config, env=environment)
        app = WebApp(d, port)
        wait_for(lambda: app.get(ready_path)[0] is not None, what="the app on port %d" % port)
        return app
    return start
