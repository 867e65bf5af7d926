"""pyhot's support module, run inside pyhotd's interpreter as `_pyhot`.

The C side (py_host.c, py_reload.c) owns the threads, the job queue and the deadlines;
this module holds the parts that are Python by nature: per-thread output capture for
`exec`, the path -> module index over sys.modules, and the reload of a batch with its
pre-check and rollback. Every entry point returns plain dicts, lists, strings and numbers,
which the C side turns into JSON. None of it runs on any thread but the python thread,
except the stdout/stderr proxies, which app threads write through.

It is compiled into the daemon (lib/py_support.py -> generated C string), so it is the
same file a reader sees here.
"""

import builtins
import fnmatch
import hashlib
import importlib
import importlib._bootstrap_external as _bootstrap_external
import io
import linecache
import os
import sys
import threading
import time
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
        if self._real is not None and threading.get_ident() not in _captures:
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
# Errors as data: type, message, file, line (and column for a SyntaxError), traceback.

_SELF_FILE = "<pyhot>/py_support.py"


def _is_machinery(filename):
    return filename == _SELF_FILE or filename.startswith("<frozen importlib")


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
_applied = {}        # realpath -> content digest of the last applied (imported/reloaded) source
_pending = []        # realpaths of files whose batch failed; they join the next batch


def configure(roots, paths):
    """Puts the watch roots, then the extra paths, at the front of sys.path."""
    _roots[:] = [os.path.realpath(r) for r in roots]
    front = [p for p in list(_roots) + [os.path.abspath(p) for p in paths]]
    sys.path[:] = front + [p for p in sys.path if p not in front]


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
    current = dict(sys.modules)
    for name in list(_index_modules):
        entry = _index_modules[name]
        if current.get(name) is not entry[0]:
            del _index_modules[name]
            names = _index.get(entry[1])
            if names is not None and name in names:
                names.remove(name)
                if not names:
                    del _index[entry[1]]
    for name, module in current.items():
        if name in _index_modules or module is None:
            continue
        origin = _module_origin(module)
        if origin is None:
            continue
        path = _realpath(origin)
        if not _under_roots(path):
            continue
        _index_modules[name] = (module, path)
        _index.setdefault(path, []).append(name)
        if path not in _applied:
            try:
                _applied[path] = _digest(_read(path))
            except OSError:
                pass
    return len(current)


def modules_for_path(path):
    refresh_index()
    return list(_index.get(os.path.realpath(path), ()))


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
    imported, errors = [], []
    for root in _roots:
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


# ---------------------------------------------------------------------------------------
# Reload. importlib.reload keeps its own semantics (spec re-found, module attributes
# re-initialised, the module object kept), but the code it executes is the one compiled
# here from the bytes that were hashed: SourceLoader.get_code would otherwise accept a
# cached .pyc whose recorded source mtime (whole seconds) and size still match an edited
# file, and run stale code.

_code_overrides = {}  # realpath -> code object, only during a reload
_original_get_code = _bootstrap_external.SourceLoader.get_code


def _get_code(self, fullname, _original=_original_get_code):
    if _code_overrides:
        path = self.get_filename(fullname)
        code = _code_overrides.get(os.path.realpath(path))
        if code is not None:
            return code
    return _original(self, fullname)


_bootstrap_external.SourceLoader.get_code = _get_code


def _elapsed_ms(start_ns):
    return (time.perf_counter_ns() - start_ns) / 1e6


def _keep_pending(changed):
    for path in changed:
        if path not in _pending:
            _pending.append(path)


def reload_batch(paths, module_names):
    """Reloads what a batch of changed paths (and/or explicit module names) maps to.

    The batch applies whole or not at all: every changed source is compiled before
    anything runs; each module's namespace is snapshotted, and if any module raises
    (any BaseException, TimeoutError from the deadline included) every module of the
    batch is restored and the old code keeps running. A path counts as applied only when
    the batch containing it succeeds.
    """
    started = time.perf_counter_ns()
    refresh_index()
    # Files of a failed batch are not applied yet: they go again with this one, so fixing
    # the one broken file applies the whole edit.
    paths = list(paths) + [p for p in _pending if p not in paths]
    reloads = []
    plan = []            # [(name, module, realpath)]
    planned = set()
    changed = {}         # realpath -> (data, digest)

    def add_to_plan(name, path, source_data):
        module = sys.modules.get(name)
        if module is None or name in planned:
            return
        planned.add(name)
        plan.append((name, module, path))
        if path is not None and path not in changed and source_data is not None:
            changed[path] = source_data

    for raw in paths:
        path = os.path.realpath(raw)
        names = list(_index.get(path, ()))
        try:
            data = _read(path)
        except FileNotFoundError:
            for name in names or [None]:
                reloads.append({"module": name, "path": path, "result": "skipped",
                                "reason": "deleted; the module stays loaded" if name
                                else "deleted", "duration_ms": 0.0})
            continue
        except OSError as exc:
            reloads.append({"module": names[0] if names else None, "path": path,
                            "result": "error", "duration_ms": 0.0,
                            "error": describe_exception(exc)})
            continue
        digest = _digest(data)
        if not names:
            reloads.append({"module": None, "path": path, "result": "skipped",
                            "reason": "not imported", "duration_ms": 0.0})
            continue
        if _applied.get(path) == digest:
            for name in names:
                reloads.append({"module": name, "path": path, "result": "skipped",
                                "reason": "content unchanged", "duration_ms": 0.0})
            continue
        for name in names:
            add_to_plan(name, path, (data, digest))

    for name in module_names:
        module = sys.modules.get(name)
        if module is None:
            continue
        origin = _module_origin(module)
        path = _realpath(origin) if origin is not None else None
        data = None
        if path is not None:
            try:
                blob = _read(path)
                data = (blob, _digest(blob))
            except OSError:
                pass
        add_to_plan(name, path, data)

    batch = {"paths": [os.path.realpath(p) for p in paths], "modules": [],
             "result": "skipped", "duration_ms": 0.0}
    if not plan:
        if any(r["result"] == "error" for r in reloads):
            batch["result"] = "error"
        batch["duration_ms"] = _elapsed_ms(started)
        return {"reloads": reloads, "batch": batch}

    # Pre-check: compile every changed source before anything runs.
    codes = {}
    failure = None
    for path, (data, _digest_value) in changed.items():
        origin = path
        for name in _index.get(path, ()):
            origin = _module_origin(sys.modules[name]) or path
            break
        try:
            codes[path] = compile(data, origin, "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as exc:
            failure = (path, describe_exception(exc))
            break

    if failure is not None:
        failed_path, error = failure
        for name, _module, path in plan:
            entry = {"module": name, "path": path, "duration_ms": 0.0}
            if path == failed_path:
                entry["result"] = "error"
                entry["error"] = error
            else:
                entry["result"] = "skipped"
                entry["reason"] = "batch failed its pre-check"
            reloads.append(entry)
        batch["result"] = "error"
        batch["error"] = error
        batch["duration_ms"] = _elapsed_ms(started)
        _keep_pending(changed)
        return {"reloads": reloads, "batch": batch}

    snapshots = [(module, dict(module.__dict__)) for _name, module, _path in plan]
    done = []
    failure = None
    _code_overrides.update(codes)
    try:
        for name, module, path in plan:
            module_started = time.perf_counter_ns()
            try:
                importlib.reload(module)
            except BaseException as exc:
                failure = (name, path, describe_exception(exc, prefer_file=module.__dict__.get("__file__")),
                           _elapsed_ms(module_started))
                break
            done.append((name, path, _elapsed_ms(module_started)))
    finally:
        _code_overrides.clear()

    if failure is not None:
        for module, snapshot in snapshots:
            namespace = module.__dict__
            namespace.clear()
            namespace.update(snapshot)
            sys.modules[module.__name__] = module
        failed_name, failed_path, error, failed_ms = failure
        for name, path, ms in done:
            reloads.append({"module": name, "path": path, "result": "rolled_back",
                            "duration_ms": ms, "reason": "%s failed" % failed_name,
                            "error": error})
        reloads.append({"module": failed_name, "path": failed_path, "result": "rolled_back",
                        "duration_ms": failed_ms, "error": error})
        batch["modules"] = [name for name, _p, _ms in done] + [failed_name]
        batch["result"] = "rolled_back"
        batch["error"] = error
        batch["duration_ms"] = _elapsed_ms(started)
        _keep_pending(changed)
        return {"reloads": reloads, "batch": batch}

    for path, (_data, digest) in changed.items():
        _applied[path] = digest
        if path in _pending:
            _pending.remove(path)
    for name, path, ms in done:
        reloads.append({"module": name, "path": path, "result": "ok", "duration_ms": ms,
                        "patched": [], "replaced": []})
    refresh_index()
    batch["modules"] = [name for name, _p, _ms in done]
    batch["result"] = "ok"
    batch["duration_ms"] = _elapsed_ms(started)
    return {"reloads": reloads, "batch": batch}


def resolve_targets(targets):
    """Maps reload targets (module names or file paths) to module names.

    An explicit reload runs even when the content is unchanged, so paths become the
    names of the modules loaded from them. Returns {"names": [...], "unknown": [...]}.
    """
    refresh_index()
    names, unknown = [], []
    for target in targets:
        if target in sys.modules and sys.modules[target] is not None:
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


def loaded_count():
    return len(sys.modules)


_install_stream_proxies()
