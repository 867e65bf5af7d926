"""pyhot's support module, run inside pyhotd's interpreter as `_pyhot`.

The C side (py_host.c, py_reload.c) owns the threads, the job queue and the deadlines;
this module holds the parts that are Python by nature: per-thread output capture for
`exec`, the deadline handler, errors as data, the path -> module index over sys.modules
and the first imports. The reload engine itself is lib/py_reload.py (`_pyhot_reload`). Every entry point returns plain dicts, lists, strings and numbers,
which the C side turns into JSON. None of it runs on any thread but the python thread,
except the stdout/stderr proxies, which app threads write through.

It is compiled into the daemon (lib/py_support.py -> generated C string), so it is the
same file a reader sees here.
"""

import fnmatch
import hashlib
import importlib
import io
import linecache
import os
import runpy  # here, not in run_isolated: a forked child would import it afresh each run
import sys
import threading
import traceback

# ---------------------------------------------------------------------------------------
# Output capture. sys.stdout and sys.stderr are replaced once by proxies that send a
# thread's writes to its capture buffers while that thread runs an `exec` job, and to the
# daemon's own streams otherwise, so app threads printing at the same moment are never
# captured into a client's reply.

_captures = {}  # thread ident -> (stdout StringIO, stderr StringIO)


class _ThreadRoutedStream(io.TextIOBase):
    def __init__(self, index, real):
        self._index = index
        self._real = real

    def write(self, text):
        capture = _captures.get(threading.get_ident())
        if capture is not None:
            return capture[self._index].write(text)
        if self._real is None:
            return len(text)
        return self._real.write(text)

    def flush(self):
        capture = _captures.get(threading.get_ident())
        if capture is not None:
            capture[self._index].flush()
        elif self._real is not None:
            self._real.flush()

    def writable(self):
        return True

    def isatty(self):
        return False

    def fileno(self):
        if self._real is None:
            raise io.UnsupportedOperation("fileno")
        return self._real.fileno()

    @property
    def encoding(self):
        return getattr(self._real, "encoding", "utf-8")

    @property
    def errors(self):
        return getattr(self._real, "errors", "strict")


def _install_stream_proxies():
    if not isinstance(sys.stdout, _ThreadRoutedStream):
        sys.stdout = _ThreadRoutedStream(0, sys.stdout)
    if not isinstance(sys.stderr, _ThreadRoutedStream):
        sys.stderr = _ThreadRoutedStream(1, sys.stderr)


# ---------------------------------------------------------------------------------------
# Deadline. The C side defines _deadline_due() in this module (true while the running job
# is the one whose deadline passed) and installs _deadline_handler for SIGUSR1, which
# CPython runs on the python thread between bytecodes and after a blocking call returns
# EINTR. Inside a Critical() section (rollback, patching: work that must never stop half
# way) the interrupt is deferred: the loop thread sends the signal again every second.

_critical_depth = 0


def _deadline_handler(signum, frame):
    if _critical_depth == 0 and _deadline_due():  # noqa: F821 (defined by py_host.c)
        raise TimeoutError("pyhot: the job passed its deadline")


class Critical:
    def __enter__(self):
        global _critical_depth
        _critical_depth += 1

    def __exit__(self, *exc):
        global _critical_depth
        _critical_depth -= 1
        return False


# ---------------------------------------------------------------------------------------
# Errors as data: type, message, file, line (and column for a SyntaxError), traceback.

def _is_machinery(filename):
    return (filename.startswith("<pyhot>/") or filename.startswith("<frozen importlib")
            or filename.endswith(os.sep + os.path.join("importlib", "__init__.py")))


def format_traceback(exc):
    """The traceback of exc as the user's code sees it: frames of this module and of
    importlib's machinery (reload goes through it) are left out, as CPython leaves out
    importlib's frames from import errors."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not _is_machinery(f.filename)]
    lines = []
    if frames:
        lines.append("Traceback (most recent call last):\n")
        lines.extend(traceback.format_list(frames))
    lines.extend(traceback.format_exception_only(type(exc), exc))
    return "".join(lines)


def describe_exception(exc, prefer_file=None):
    """The error object of the protocol for exc.

    file and line point at the SyntaxError's location, else at the innermost frame of
    prefer_file when the traceback passes through it (the module being reloaded), else
    at the innermost frame.
    """
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ not in ("builtins", "__main__"):
        name = kind.__module__ + "." + name
    error = {
        "type": name,
        "message": str(exc),
        "file": None,
        "line": None,
        "traceback": format_traceback(exc),
    }
    if isinstance(exc, SyntaxError):
        error["message"] = exc.msg if exc.msg else str(exc)
        error["file"] = exc.filename
        error["line"] = exc.lineno
        error["column"] = exc.offset
        return error
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not _is_machinery(f.filename)]
    chosen = None
    for frame in frames:
        if prefer_file is not None and frame.filename == prefer_file:
            chosen = frame
    if chosen is None and frames:
        chosen = frames[-1]
    if chosen is not None:
        error["file"] = chosen.filename
        error["line"] = chosen.lineno
    return error


# ---------------------------------------------------------------------------------------
# exec: code in __main__'s namespace, output captured, the repr of a lone expression.

_exec_counter = 0


def exec_code(source):
    global _exec_counter
    _exec_counter += 1
    filename = "<pyhot-exec-%d>" % _exec_counter
    # Registered so tracebacks of the code show its lines, as the REPL's do.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = sys.modules["__main__"].__dict__
    out, err = io.StringIO(), io.StringIO()
    ident = threading.get_ident()
    _captures[ident] = (out, err)
    reply = {"ok": True, "value": None}
    try:
        try:
            code = compile(source, filename, "eval", dont_inherit=True)
            is_expression = True
        except SyntaxError:
            code = compile(source, filename, "exec", dont_inherit=True)
            is_expression = False
        if is_expression:
            value = eval(code, namespace)
            if value is not None:
                reply["value"] = repr(value)
                namespace["_"] = value
        else:
            exec(code, namespace)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt must not end the daemon
        reply = {"ok": False, "error": describe_exception(exc)}
    finally:
        del _captures[ident]
        if len(linecache.cache) > 1000:
            linecache.cache.pop(filename, None)
    reply["stdout"] = out.getvalue()
    reply["stderr"] = err.getvalue()
    return reply


# ---------------------------------------------------------------------------------------
# Watch roots, module index, content hashes.

_roots = []          # realpaths of the watch roots
_realpaths = {}      # origin string -> realpath (an origin's realpath is fixed once imported)
_index = {}          # realpath -> [module name, ...]
_index_modules = {}  # module name -> (module object, realpath)
_index_seen = {}     # module name -> module object already looked at (watched or not)
_index_generation = 0  # bumped whenever a watched module appears or leaves
_index_signature = [None]  # (len(sys.modules), last key) at the last full scan
_applied = {}        # realpath -> content digest of the last applied (imported/reloaded) source
_pending = []        # realpaths of files whose batch failed; they join the next batch


def configure(roots, paths, venv=None):
    """Puts the watch roots, then the extra paths, at the front of sys.path; with venv,
    makes the virtual environment's packages importable."""
    _roots[:] = [os.path.realpath(r) for r in roots]
    if venv:
        _use_venv(venv)
    front = [p for p in list(_roots) + [os.path.abspath(p) for p in paths]]
    sys.path[:] = front + [p for p in sys.path if p not in front]


def _use_venv(venv):
    """sys.path and sys.prefix as the venv's own interpreter has them (PEP 405, Lib/site.py):
    its site-packages (with their .pth files) after the standard library, and the system's
    site-packages only when pyvenv.cfg says include-system-site-packages = true."""
    import site
    include_system = False
    with open(os.path.join(venv, "pyvenv.cfg")) as f:
        for line in f:
            key, _, value = line.partition("=")
            if key.strip().lower() == "include-system-site-packages":
                include_system = value.strip().lower() == "true"
    if not include_system:
        system = set(site.getsitepackages())
        user = site.getusersitepackages() if site.ENABLE_USER_SITE else None
        if user:
            system.add(user)
        sys.path[:] = [p for p in sys.path if p not in system]
    sys.prefix = sys.exec_prefix = venv
    site.addsitedir(os.path.join(venv, "lib", "python%d.%d" % sys.version_info[:2], "site-packages"))


def _under_roots(path):
    for root in _roots:
        if path == root or path.startswith(root + os.sep):
            return True
    return False


def _module_origin(module):
    spec = getattr(module, "__spec__", None)
    origin = None
    if spec is not None and getattr(spec, "has_location", False):
        origin = spec.origin
    if not isinstance(origin, str):
        origin = getattr(module, "__file__", None)
    if not isinstance(origin, str) or not origin.endswith(".py"):
        return None
    return origin


def _realpath(origin):
    path = _realpaths.get(origin)
    if path is None:
        path = os.path.realpath(origin)
        _realpaths[origin] = path
    return path


def _digest(data):
    return hashlib.blake2b(data, digest_size=16).digest()


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def refresh_index():
    """Brings the path -> modules index up to date with sys.modules.

    Incremental: only modules that appeared or were replaced since the last call are
    looked at, so the cost follows what changed, not the size of sys.modules. A module
    first seen under a root gets its file's digest recorded as applied, so a later save
    of the same content is recognised as unchanged.
    """
    global _index_generation
    # sys.modules is a dict: a new import appends a key, so its size and last key tell
    # whether anything was added or removed since the last scan. A module replaced in
    # place under the same name is caught by the callers' identity checks.
    signature = (len(sys.modules), next(reversed(sys.modules), None))
    if signature == _index_signature[0]:
        return signature[0]
    _index_signature[0] = signature
    current = dict(sys.modules)
    if len(_index_seen) > 2 * len(current):
        _index_seen.clear()
    for name in list(_index_modules):
        entry = _index_modules[name]
        if current.get(name) is not entry[0]:
            del _index_modules[name]
            _index_generation += 1
            names = _index.get(entry[1])
            if names is not None and name in names:
                names.remove(name)
                if not names:
                    del _index[entry[1]]
    for name, module in current.items():
        if module is None or _index_seen.get(name) is module:
            continue
        _index_seen[name] = module
        indexed = _index_modules.get(name)
        if indexed is not None and indexed[0] is module:
            continue  # seen again after _index_seen was cleared (update_roots): indexed once
        origin = _module_origin(module)
        if origin is None:
            continue
        path = _realpath(origin)
        if not _under_roots(path):
            continue
        _index_modules[name] = (module, path)
        _index_generation += 1
        _index.setdefault(path, []).append(name)
        if path not in _applied:
            try:
                _applied[path] = _digest(_read(path))
            except OSError:
                pass
    return len(current)


def note_reordered(count):
    """importlib.reload moves a module's key to the end of sys.modules; when nothing was
    added or removed (the size is still count), the index is still current."""
    if _index_signature[0] is not None and _index_signature[0][0] == count == len(sys.modules):
        _index_signature[0] = (count, next(reversed(sys.modules), None))




def list_modules(pattern=None):
    refresh_index()
    result = []
    for name in sorted(sys.modules):
        if pattern is not None and not fnmatch.fnmatchcase(name, pattern):
            continue
        module = sys.modules[name]
        origin = _module_origin(module) if module is not None else None
        if origin is None and module is not None:
            origin = getattr(module, "__file__", None)
            if not isinstance(origin, str):
                origin = None
        watched = name in _index_modules
        result.append({"name": name, "path": origin, "watched": watched})
    return {"modules": result}


def _is_identifier_path(parts):
    return all(part.isidentifier() for part in parts)


def _root_modules(root, ignored_dirs):
    """Module names for the .py files under root, packages before their contents."""
    names = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        parts = [] if rel == "." else rel.split(os.sep)
        dirnames[:] = sorted(
            d for d in dirnames if d not in ignored_dirs and d.isidentifier()
        )
        if not _is_identifier_path(parts):
            continue
        for filename in sorted(filenames):
            if not filename.endswith(".py"):
                continue
            stem = filename[:-3]
            if stem == "__main__" or not stem.isidentifier():
                continue
            if stem == "__init__":
                if parts:
                    names.append(".".join(parts))
            else:
                names.append(".".join(parts + [stem]))
    return names


_DEFAULT_IGNORED_DIRS = {
    "__pycache__", ".git", ".hg", ".svn", ".venv", "venv", "node_modules",
    ".mypy_cache", ".pytest_cache", ".tox",
}


def import_roots():
    """Imports every module under the watch roots; returns what happened per module."""
    return _import_modules(_roots)


def _import_modules(roots):
    imported, errors = [], []
    for root in roots:
        for name in _root_modules(root, _DEFAULT_IGNORED_DIRS):
            if name in sys.modules:
                continue
            try:
                importlib.import_module(name)
                imported.append(name)
            except BaseException as exc:
                error = describe_exception(exc)
                error["module"] = name
                errors.append(error)
    refresh_index()
    return {"imported": imported, "errors": errors, "modules_loaded": len(sys.modules)}


def update_roots(added, removed, import_modules):
    """A configuration reload's roots: removed ones leave sys.path and stop being
    reloadable (their modules stay loaded); added ones go first on sys.path and, with
    import_modules, their modules are imported."""
    for root in removed:
        real = os.path.realpath(root)
        if real in _roots:
            _roots.remove(real)
        if real in sys.path:
            sys.path.remove(real)
        for name in [n for n, (_m, p) in _index_modules.items() if not _under_roots(p)]:
            del _index_modules[name]
        for path in [p for p in _index if not _under_roots(p)]:
            del _index[path]
    global _index_generation
    _index_generation += 1
    _index_seen.clear()
    _index_signature[0] = None
    for root in added:
        real = os.path.realpath(root)
        if real not in _roots:
            _roots.append(real)
        if real not in sys.path:
            sys.path.insert(0, real)
    result = {"imported": [], "errors": []}
    if import_modules and added:
        result = _import_modules(os.path.realpath(r) for r in added)
    refresh_index()
    return result


def start_entry(entry):
    """Imports MODULE of MODULE:FUNCTION and calls FUNCTION on a daemon thread of its own,
    so the app keeps running while jobs run on the python thread."""
    module_name, _, function_name = entry.partition(":")
    try:
        module = importlib.import_module(module_name)
        function = getattr(module, function_name)
        if not callable(function):
            raise TypeError("%s is not callable" % entry)
    except BaseException as exc:
        return {"ok": False, "error": describe_exception(exc)}

    def run():
        try:
            # Looked up at call time, not bound at start: a reload before the thread
            # ran still gives the new function.
            getattr(sys.modules[module_name], function_name)()
        except BaseException:
            sys.stderr.write("pyhot: entry %s raised:\n%s" % (entry, traceback.format_exc()))

    thread = threading.Thread(target=run, name="pyhot-entry", daemon=True)
    thread.start()
    return {"ok": True, "thread": thread.name}


def resolve_targets(targets):
    """Maps reload targets (module names or file paths) to module names. Only modules loaded
    from under a watch root count: nothing outside the roots is ever reloaded.

    An explicit reload runs even when the content is unchanged, so paths become the
    names of the modules loaded from them. Returns {"names": [...], "unknown": [...]}.
    """
    refresh_index()
    names, unknown = [], []
    for target in targets:
        if target in _index_modules:
            found = [target]
        elif os.sep in target or target.endswith(".py"):
            found = list(_index.get(os.path.realpath(target), ()))
        else:
            found = []
        if not found:
            unknown.append(target)
        for name in found:
            if name not in names:
                names.append(name)
    return {"names": names, "unknown": unknown}




# ---------------------------------------------------------------------------------------
# Runs (lib/py_run.c, docs/run.md): a script as __main__ in a fresh namespace, on a thread
# of its own (in-process) or in a forked child (isolated). _pyhot_run is the C side.

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
    """A run's stdout or stderr: text goes to the client (through _pyhot_run.emit) line by
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
            import _pyhot_run
            _pyhot_run.emit(self._run_id, self._stream, text)


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


def _execute(spec, argv):
    """Runs spec's script as __main__ in a fresh namespace (runpy._run_code semantics)."""
    import pkgutil
    init_globals = spec.get("globals") or None
    module = spec.get("module")
    if module is not None:
        mod_name, mod_spec, code = runpy._get_module_details(module)
        argv[0] = mod_spec.origin
        runpy._run_code(code, {}, init_globals, "__main__", mod_spec, mod_spec.parent)
        return
    path = spec["path"]
    if os.path.isdir(path) or (os.path.isfile(path) and _is_zip(path)):
        with _path_lock:
            sys.path.insert(0, path)
            try:
                mod_spec = _main_spec_of(path)
                code = mod_spec.loader.get_code("__main__")
                runpy._run_code(code, {}, init_globals, "__main__", mod_spec, "")
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
    runpy._run_code(code, {}, init_globals, "__main__", None, "", path)


def _is_zip(path):
    import zipfile
    return zipfile.is_zipfile(path)


def _check_target(spec):
    path = spec.get("path")
    if path is not None and not os.path.exists(path):
        raise FileNotFoundError(2, "can't open file %r: No such file or directory" % path)


def start_run(spec):
    """Starts an in-process run of spec (the request: run_id, path | module, argv, globals,
    timeout_ms) on a thread of its own and returns at once."""
    import _pyhot_run
    import time as time_module
    _check_target(spec)
    if time_module.sleep is not _pyhot_run.sleep:
        time_module.sleep = _pyhot_run.sleep  # interruptible on run threads (py_run.c)
    run_id = spec["run_id"]
    thread = threading.Thread(target=_run_thread, args=(run_id, spec),
                              name="pyhot-run-%d" % run_id, daemon=True)
    thread.start()
    return {"started": True, "thread": thread.name}


def _run_thread(run_id, spec):
    import _pyhot_run
    import time as time_module
    started = time_module.monotonic()
    cpu_started = time_module.thread_time()
    ident = threading.get_ident()
    out, err = _RunOutput(run_id, "stdout"), _RunOutput(run_id, "stderr")
    out.other, err.other = err, out
    argv = [spec.get("path") or spec.get("module") or ""] + list(spec.get("argv") or [])
    with _run_lock:
        if _active_runs[0] == 0 and not isinstance(sys.argv, _ArgvProxy):
            _real_argv[0] = sys.argv
            sys.argv = _ArgvProxy(sys.argv)
        _active_runs[0] += 1
        _run_argvs[ident] = argv
    _captures[ident] = (out, err)
    _pyhot_run.register(run_id)
    done = threading.Event()
    timeout_ms = spec.get("timeout_ms") or 0
    if timeout_ms > 0:
        def watchdog():
            if done.wait(timeout_ms / 1000.0):
                return
            # Again every second, in case the script caught the first TimeoutError.
            while _pyhot_run.cancel(run_id) and not done.wait(1.0):
                pass
        threading.Thread(target=watchdog, name="pyhot-run-%d-timeout" % run_id,
                         daemon=True).start()
    code = 1
    timed_out = False
    try:
        try:
            _execute(spec, argv)
            code = 0
        except SystemExit as exc:
            code = _exit_code_of(exc, err)
        except BaseException as exc:
            err.write(_format_run_traceback(exc))
            code = 1
    finally:
        # An interrupt aimed at us after the script ended is dropped by unregister.
        timed_out = _pyhot_run.unregister(run_id)
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
            _pyhot_run.finish(run_id, {
                "exit_code": code, "timed_out": bool(timed_out), "signal": None,
                "isolated": False,
                "duration_ms": (time_module.monotonic() - started) * 1000.0,
                # The run thread's own CPU time; the peak RSS is the daemon's (one process).
                "cpu_ms": (time_module.thread_time() - cpu_started) * 1000.0,
                "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss})


# What a sandboxed run may read besides [sandbox] read (docs/run.md "Sandbox"): what the
# dynamic loader needs to load an extension module's libraries, and the child's own
# /proc/self (resolved in the child, so only its own process).
_SANDBOX_SYSTEM_READ = ("/usr/lib", "/usr/local/lib", "/etc/ld.so.cache", "/proc/self")
_sandbox_stdlib_paths = []


def sandbox_read_paths(spec):
    """The paths a sandboxed run of spec may read (py_run.c hands them to sandbox.c's
    Landlock step): the interpreter's and the daemon's import paths (sys.path, the standard
    library), the script's directory, and _SANDBOX_SYSTEM_READ; only those that exist,
    each once, in that order."""
    if not _sandbox_stdlib_paths:
        import sysconfig  # asked once: get_path costs half a millisecond a call
        _sandbox_stdlib_paths.extend(sysconfig.get_path(key) for key in
                                     ("stdlib", "platstdlib", "purelib", "platlib"))
    candidates = list(sys.path) + _sandbox_stdlib_paths
    target = spec.get("path")
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


def run_isolated(spec):
    """In the forked child (py_run.c): fd 1 and 2 are the daemon's pipes. Runs spec as
    python3 would (runpy, sys.modules['__main__'] and sys.argv are the child's own) and
    returns the exit status."""
    _captures.clear()
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    code = 1
    if spec.get("tmpdir"):
        # The sandbox's private TMPDIR; tempfile caches its choice once imported, so it is
        # told too (not imported here: that costs a run milliseconds).
        os.environ["TMPDIR"] = spec["tmpdir"]
        if "tempfile" in sys.modules:
            sys.modules["tempfile"].tempdir = spec["tmpdir"]
    try:
        try:
            sys.argv = [spec.get("path") or spec.get("module") or ""] + list(spec.get("argv") or [])
            _check_target(spec)
            init_globals = spec.get("globals") or None
            if spec.get("module") is not None:
                runpy.run_module(spec["module"], init_globals, "__main__", alter_sys=True)
            else:
                runpy.run_path(spec["path"], init_globals, "__main__")
            code = 0
        except SystemExit as exc:
            code = _exit_code_of(exc, sys.stderr)
        except BaseException as exc:
            sys.stderr.write(_format_run_traceback(exc))
            code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
    return code


def preload(modules):
    """[python] preload: imports each module; a failure is reported, not raised."""
    imported, errors = [], []
    for name in modules:
        try:
            importlib.import_module(name)
            imported.append(name)
        except BaseException as exc:
            error = describe_exception(exc)
            error["module"] = name
            errors.append(error)
    return {"imported": imported, "errors": errors, "modules_loaded": len(sys.modules)}


# ---------------------------------------------------------------------------------------
# repl: one input of an interactive console (code.InteractiveConsole's rules), in
# __main__'s namespace, expression values echoed through sys.displayhook.

_repl_counter = [0]


def repl_input(source):
    import codeop
    _repl_counter[0] += 1
    filename = "<pyhot-repl-%d>" % _repl_counter[0]
    out, err = io.StringIO(), io.StringIO()
    try:
        code = codeop.compile_command(source, filename, "single")
    except (OverflowError, SyntaxError, ValueError) as exc:
        text = "".join(traceback.format_exception_only(type(exc), exc))
        return {"incomplete": False, "stdout": "", "stderr": text}
    if code is None:
        return {"incomplete": True, "stdout": "", "stderr": ""}
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = sys.modules["__main__"].__dict__
    ident = threading.get_ident()
    _captures[ident] = (out, err)
    try:
        try:
            exec(code, namespace)
        except SystemExit:
            err.write("SystemExit ignored: the daemon's interpreter does not exit\n")
        except BaseException as exc:
            err.write(format_traceback(exc))
    finally:
        del _captures[ident]
    return {"incomplete": False, "stdout": out.getvalue(), "stderr": err.getvalue()}


_install_stream_proxies()
