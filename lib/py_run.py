"""pyhot's runs, run inside pyhotd's interpreter as `_pyhot_run` (docs/run.md).

A script runs as __main__ in a fresh namespace, on a thread of its own (in-process:
start_run) or in a child forked from the warm interpreter (isolated: run_isolated).
lib/py_run.c creates this module with its C functions (emit, finish, register,
unregister, cancel, sleep, original_sleep) and runs this file in it, so both halves are
one module; what the daemon calls here returns plain dicts and numbers. Output goes
through `_pyhot`'s per-thread capture.

It is compiled into the daemon (lib/py_run.py -> generated C string), so it is the same
file a reader sees here.
"""

import gc
import io
import os
# runpy, and pkgutil that its run_path imports on its first call, here and not in
# run_isolated: a forked child would import them afresh each run (pkgutil takes typing).
import pkgutil
import runpy
import sys
import threading
import traceback

from _pyhot import _captures, _is_machinery

# emit, finish, register, unregister, cancel, sleep and original_sleep are the C half's
# (lib/py_run.c), put in this module's namespace before this file runs.


_run_lock = threading.Lock()     # guards _run_argvs, _real_argv, _active_runs
_run_argvs = {}                  # thread ident -> the argv list of the run on that thread
_real_argv = [None]              # the daemon's sys.argv while the proxy is installed
_active_runs = [0]
_path_lock = threading.Lock()    # directory and zip runs put their path on sys.path


def _argv_method(name):
    base = getattr(list, name)

    def method(self, *args):
        target = _run_argvs.get(threading.get_ident())
        if target is None:
            return base(self, *args)
        return getattr(target, name)(*args)
    method.__name__ = name
    return method


class _ArgvProxy(list):
    """sys.argv while runs exist: each run thread sees (and may change) its own argv, every
    other thread the daemon's (held in the list itself)."""

    def __iadd__(self, other):
        self.extend(other)
        return self

    def __reduce_ex__(self, protocol):
        return (list, (list(self),))


for _name in ("__getitem__", "__setitem__", "__delitem__", "__len__", "__iter__",
              "__reversed__", "__contains__", "__repr__", "__eq__", "__ne__", "__lt__",
              "__le__", "__gt__", "__ge__", "__add__", "__mul__", "__rmul__", "append",
              "extend", "insert", "pop", "remove", "clear", "index", "count", "copy", "sort",
              "reverse"):
    setattr(_ArgvProxy, _name, _argv_method(_name))
del _name


class _RunOutput:
    """A run's stdout or stderr: text goes to the client (through emit, py_run.c) line by
    line, at once on flush(), and before the other stream's next write, so the client sees
    the two streams in the order they were written."""

    def __init__(self, run_id, stream):
        self._run_id = run_id
        self._stream = stream
        self._buffer = []
        self._size = 0
        self.other = None

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError("write() argument must be str, not %s" % type(text).__name__)
        if not text:
            return 0
        if self.other is not None and self.other._buffer:
            self.other.flush()
        self._buffer.append(text)
        self._size += len(text)
        if "\n" in text or self._size >= 8192:
            self.flush()
        return len(text)

    def flush(self):
        if self._buffer:
            text = "".join(self._buffer)
            self._buffer = []
            self._size = 0
            emit(self._run_id, self._stream, text)


def _is_run_machinery(filename):
    return _is_machinery(filename) or filename in ("<frozen runpy>",) or filename.endswith(
        os.sep + "runpy.py")


def _format_run_traceback(exc):
    """As the interpreter prints an uncaught exception: chained causes included, pyhot's
    and runpy's frames left out."""
    lines = []
    for line in traceback.TracebackException.from_exception(exc).format():
        lines.append(line)
    text = "".join(lines)
    # Drop frame entries of our own machinery (2 lines each: location, source).
    out, skip = [], False
    for line in text.splitlines(True):
        if line.startswith('  File "'):
            filename = line[len('  File "'):].split('"', 1)[0]
            skip = _is_run_machinery(filename)
            if skip:
                continue
        elif skip and line.startswith("    "):
            continue
        else:
            skip = False
        out.append(line)
    return "".join(out)


def _exit_code_of(exc, err):
    """SystemExit's code as the interpreter turns it into a status (Python/pythonrun.c,
    handle_system_exit): None -> 0, an int -> itself, anything else printed and 1."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    try:
        err.write(str(code) + "\n")
    except Exception:
        pass
    return 1


def _main_spec_of(path):
    """The __main__ module of a directory or zip app (what runpy.run_path finds after
    putting path first on sys.path), found without touching sys.modules['__main__']."""
    import importlib.machinery
    spec = importlib.machinery.PathFinder.find_spec("__main__", [path])
    if spec is None or spec.loader is None:
        raise ImportError("can't find '__main__' module in %r" % path)
    return spec


# A script given as text (`pyhotctl run -`): named as python3 names a script it reads from
# standard input (sys.argv[0] "-", __file__ "<stdin>").
STDIN_ARGV0 = "-"
STDIN_FILENAME = "<stdin>"


def _argv0(spec):
    if spec.get("source") is not None:
        return STDIN_ARGV0
    return spec.get("path") or spec.get("module") or ""


def _execute(spec, argv, namespace):
    """Runs spec's script as __main__ in namespace, a fresh dict (runpy._run_code
    semantics); namespace keeps what the script bound even when it raised."""
    init_globals = spec.get("globals") or None
    source = spec.get("source")
    if source is not None:
        code = compile(source, STDIN_FILENAME, "exec", dont_inherit=True)
        runpy._run_code(code, namespace, init_globals, "__main__", None, "", STDIN_FILENAME)
        return
    module = spec.get("module")
    if module is not None:
        mod_name, mod_spec, code = runpy._get_module_details(module)
        argv[0] = mod_spec.origin
        runpy._run_code(code, namespace, init_globals, "__main__", mod_spec, mod_spec.parent)
        return
    path = spec["path"]
    if os.path.isdir(path) or (os.path.isfile(path) and _is_zip(path)):
        with _path_lock:
            sys.path.insert(0, path)
            try:
                mod_spec = _main_spec_of(path)
                code = mod_spec.loader.get_code("__main__")
                runpy._run_code(code, namespace, init_globals, "__main__", mod_spec, "")
            finally:
                try:
                    sys.path.remove(path)
                except ValueError:
                    pass
        return
    with io.open_code(path) as f:
        code = pkgutil.read_code(f)
    if code is None:
        with io.open_code(path) as f:
            code = compile(f.read(), path, "exec", dont_inherit=True)
    runpy._run_code(code, namespace, init_globals, "__main__", None, "", path)


def _is_zip(path):
    import zipfile
    return zipfile.is_zipfile(path)


def _check_target(spec):
    path = spec.get("path")
    if path is not None and not os.path.exists(path):
        raise FileNotFoundError(2, "can't open file %r: No such file or directory" % path)


def start_run(spec):
    """Starts an in-process run of spec (the request: run_id, path | module | source, argv,
    globals, timeout_ms) on a thread of its own and returns at once."""
    import time as time_module
    _check_target(spec)
    if time_module.sleep is not sleep:
        time_module.sleep = sleep  # interruptible on run threads (py_run.c)
    run_id = spec["run_id"]
    thread = threading.Thread(target=_run_thread, args=(run_id, spec),
                              name="pyhot-run-%d" % run_id, daemon=True)
    thread.start()
    return {"started": True, "thread": thread.name}


def _run_thread(run_id, spec):
    import time as time_module
    started = time_module.monotonic()
    cpu_started = time_module.thread_time()
    ident = threading.get_ident()
    out, err = _RunOutput(run_id, "stdout"), _RunOutput(run_id, "stderr")
    out.other, err.other = err, out
    argv = [_argv0(spec)] + list(spec.get("argv") or [])
    with _run_lock:
        if _active_runs[0] == 0 and not isinstance(sys.argv, _ArgvProxy):
            _real_argv[0] = sys.argv
            sys.argv = _ArgvProxy(sys.argv)
        _active_runs[0] += 1
        _run_argvs[ident] = argv
    _captures[ident] = (out, err)
    register(run_id)
    done = threading.Event()
    timeout_ms = spec.get("timeout_ms") or 0
    if timeout_ms > 0:
        def watchdog():
            if done.wait(timeout_ms / 1000.0):
                return
            # Again every second, in case the script caught the first TimeoutError.
            while cancel(run_id) and not done.wait(1.0):
                pass
        threading.Thread(target=watchdog, name="pyhot-run-%d-timeout" % run_id,
                         daemon=True).start()
    code = 1
    timed_out = False
    namespace = {}
    try:
        try:
            _execute(spec, argv, namespace)
            code = 0
        except SystemExit as exc:
            code = _exit_code_of(exc, err)
        except BaseException as exc:
            err.write(_format_run_traceback(exc))
            code = 1
    finally:
        # An interrupt aimed at us after the script ended is dropped by unregister.
        timed_out = unregister(run_id)
        done.set()
        try:
            out.flush()
            err.flush()
        finally:
            _captures.pop(ident, None)
            with _run_lock:
                _run_argvs.pop(ident, None)
                _active_runs[0] -= 1
                if _active_runs[0] == 0 and isinstance(sys.argv, _ArgvProxy):
                    sys.argv = _real_argv[0]
                    _real_argv[0] = None
            import resource
            result = {
                "exit_code": code, "timed_out": bool(timed_out), "signal": None,
                "isolated": False,
                "duration_ms": (time_module.monotonic() - started) * 1000.0,
                # The run thread's own CPU time; the peak RSS is the daemon's (one process).
                "cpu_ms": (time_module.thread_time() - cpu_started) * 1000.0,
                "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
            if spec.get("get"):
                result.update(run_globals(namespace, spec["get"]))
            finish(run_id, result)


# What a sandboxed run may read besides [sandbox] read (docs/run.md "Sandbox"): what the
# dynamic loader needs to load an extension module's libraries, and the child's own
# /proc/self (resolved in the child, so only its own process).
_SANDBOX_SYSTEM_READ = ("/usr/lib", "/usr/local/lib", "/etc/ld.so.cache", "/proc/self")
_sandbox_stdlib_paths = []


def sandbox_read_paths(target):
    """The paths a sandboxed run of target (its "path": a script, directory or zip; None
    for a module or a script given as text) may read (py_run.c hands them to sandbox.c's
    Landlock step): the interpreter's and the daemon's import paths (sys.path, the standard
    library), the script's directory, and _SANDBOX_SYSTEM_READ; only those that exist,
    each once, in that order."""
    if not _sandbox_stdlib_paths:
        import sysconfig  # asked once: get_path costs half a millisecond a call
        _sandbox_stdlib_paths.extend(sysconfig.get_path(key) for key in
                                     ("stdlib", "platstdlib", "purelib", "platlib"))
    candidates = list(sys.path) + _sandbox_stdlib_paths
    if target:
        candidates.append(target if os.path.isdir(target) else os.path.dirname(target))
    candidates.extend(_SANDBOX_SYSTEM_READ)
    paths, seen = [], set()
    for path in candidates:
        if not path or not os.path.isabs(path) or path in seen:
            continue
        seen.add(path)
        if path == "/proc/self" or os.path.exists(path):
            paths.append(path)
    return paths


def prepare_isolated(dry_run):
    """In a child forked for isolated runs (lib/py_prefork.c), before its request: what
    does not depend on the request, and the dry run when dry_run (False when the request
    is already waiting). fd 0 is /dev/null, fd 1 and 2 the daemon's pipes."""
    _captures.clear()
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    # The objects the daemon made stay out of this process's collections: a collection
    # writes to every object it looks at, and each write copies a page the daemon shares.
    gc.freeze()
    if dry_run:
        _dry_run()


# A script for the dry run: one line of output, as most scripts write.
_DRY_RUN_SCRIPT = b"print('pyhot')\n"


def _dry_run():
    """What every run does, on a script of one print() given as a path (a memfd) with its
    output to /dev/null: the pages this writes are copied now, before the request, and not
    after it (docs/run.md "Ready children"). Best effort: a failure costs speed only."""
    saved = sys.stdout, sys.stderr
    fd = -1
    try:
        fd = os.memfd_create("pyhot-dry-run")
        os.write(fd, _DRY_RUN_SCRIPT)
        sys.stdout = sys.stderr = io.TextIOWrapper(
            io.FileIO(os.devnull, "w"), encoding="utf-8", errors="backslashreplace",
            line_buffering=True)
        run_isolated({"path": "/proc/self/fd/%d" % fd})
    except Exception:
        pass
    finally:
        if sys.stdout is not saved[0]:
            sys.stdout.close()
        sys.stdout, sys.stderr = saved
        if fd >= 0:
            os.close(fd)
    sys.argv = [""]


def run_request(spec):
    """The request's run in the child (lib/py_run.c), after the cage: the daemon's objects
    go back into the collector's view first, so that gc.get_objects() and gc.get_referrers()
    in the script see them as they would in the daemon (a gen-2 collection during the run
    then looks at them too, as in any process). Returns run_isolated's exit status."""
    gc.unfreeze()
    return run_isolated(spec)


def run_isolated(spec):
    """In the forked child, after prepare_isolated and the request-dependent steps
    (lib/py_prefork.c). Runs spec as python3 would (runpy, sys.modules['__main__'] and
    sys.argv are the child's own) and returns the exit status."""
    code = 1
    if spec.get("tmpdir"):
        # The sandbox's private TMPDIR; tempfile caches its choice once imported, so it is
        # told too (not imported here: that costs a run milliseconds).
        os.environ["TMPDIR"] = spec["tmpdir"]
        if "tempfile" in sys.modules:
            sys.modules["tempfile"].tempdir = spec["tmpdir"]
    namespace = None
    try:
        try:
            sys.argv = [_argv0(spec)] + list(spec.get("argv") or [])
            _check_target(spec)
            init_globals = spec.get("globals") or None
            if spec.get("source") is not None:
                code = compile(spec["source"], STDIN_FILENAME, "exec", dont_inherit=True)
                with runpy._TempModule("__main__") as main:
                    namespace = runpy._run_code(code, main.module.__dict__, init_globals,
                                                "__main__", None, "", STDIN_FILENAME)
            elif spec.get("module") is not None:
                namespace = runpy.run_module(spec["module"], init_globals, "__main__", alter_sys=True)
            else:
                namespace = runpy.run_path(spec["path"], init_globals, "__main__")
            code = 0
        except SystemExit as exc:
            namespace = _main_namespace_of(exc)
            code = _exit_code_of(exc, sys.stderr)
        except BaseException as exc:
            namespace = _main_namespace_of(exc)
            sys.stderr.write(_format_run_traceback(exc))
            code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
    if spec.get("get"):
        _send_globals(run_globals(namespace or {}, spec["get"]), spec.get("globals_fd", 3))
    return code


# ---------------------------------------------------------------------------------------
# A run's results (run --get NAME, docs/run.md): values of the script's globals as JSON
# where they are JSON by nature, else their repr and type.

_GET_REPR_MAX = 64 * 1024        # characters of one repr
_GET_VALUE_MAX = 1024 * 1024     # bytes of one value's JSON; larger ones go as repr
_GET_TOTAL_MAX = 8 * 1024 * 1024 # bytes of all values; names past it are "omitted"
_GET_DEPTH_MAX = 32              # nesting of lists and dicts (py_to_json stops at 64)
_INT64 = (-(1 << 63), (1 << 63) - 1)


class _NotJSON(Exception):
    pass


def _as_json(value, depth=0):
    """value as plain JSON data (tuples become lists), or _NotJSON: what the protocol's
    JSON (jansson) carries exactly: str keys, 64-bit integers, finite floats, valid
    UTF-8, no cycle."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise _NotJSON()
        return int(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise _NotJSON()
        return float(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _NotJSON()
        return str(value)
    if depth >= _GET_DEPTH_MAX:
        raise _NotJSON()
    if isinstance(value, (list, tuple)):
        return [_as_json(item, depth + 1) for item in value]
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise _NotJSON()
        return {_as_json(key): _as_json(item, depth + 1) for key, item in value.items()}
    raise _NotJSON()


def _as_repr(value):
    kind = type(value)
    name = kind.__qualname__ if kind.__module__ == "builtins" else kind.__module__ + "." + kind.__qualname__
    try:
        text = repr(value)
    except BaseException as exc:
        text = "<repr() raised %s>" % type(exc).__name__
    described = {"repr": text[:_GET_REPR_MAX], "type": name}
    if len(text) > _GET_REPR_MAX:
        described["truncated"] = True
    return described


def run_globals(namespace, names):
    """{"globals": {name: value}, "missing": [...], "omitted": [...]} for the names asked
    (in their order): each value as JSON data when it is JSON by nature (_as_json) and its
    JSON is under _GET_VALUE_MAX bytes, else {"repr", "type"} (repr capped at
    _GET_REPR_MAX characters, "truncated": true when it was cut). "*" stands for every
    public global (no leading "_") that is JSON by nature. A name the script did not bind
    is missing, not an error; names past _GET_TOTAL_MAX bytes in all are omitted."""
    import json
    values, missing, omitted = {}, [], []
    total = 0
    wanted = []
    for name in names:
        if name == "*":
            wanted.extend((n, True) for n in list(namespace)
                          if isinstance(n, str) and not n.startswith("_"))
        else:
            wanted.append((name, False))
    for name, only_json in wanted:
        if name in values or name in omitted:
            continue
        if name not in namespace:
            if name not in missing:
                missing.append(name)
            continue
        value = namespace[name]
        try:
            data = _as_json(value)
            size = len(json.dumps(data, ensure_ascii=False))
            if size > _GET_VALUE_MAX:
                raise _NotJSON()
        except (_NotJSON, RecursionError, ValueError):
            if only_json:
                continue
            data = _as_repr(value)
            size = len(json.dumps(data, ensure_ascii=False))
        if total + size > _GET_TOTAL_MAX:
            omitted.append(name)
            continue
        total += size
        values[name] = data
    result = {"globals": values, "missing": missing}
    if omitted:
        result["omitted"] = omitted
    return result


def _main_namespace_of(exc):
    """The globals of the script's top-level frame in exc's traceback (what the script had
    bound when it raised or exited), or None."""
    namespace = None
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__") == "__main__":
            namespace = frame.f_globals
        tb = tb.tb_next
    return namespace


def _send_globals(result, fd):
    """An isolated child's values, as one JSON document on fd (the daemon's pipe), before
    the child exits."""
    import json
    data = json.dumps(result, ensure_ascii=False, allow_nan=False).encode("utf-8")
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass
