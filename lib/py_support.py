"""pyhot's support module, run inside pyhotd's interpreter as `_pyhot`.

The C side (py_host.c, py_reload.c) owns the threads, the job queue and the deadlines;
this module holds the parts that are Python by nature: per-thread output capture for
`exec`, the deadline handler, errors as data, the path -> module index over sys.modules
and the first imports. The reload engine itself is lib/py_reload.py (`_pyhot_reload`),
runs are lib/py_run.py (`_pyhot_run`). Every entry point returns plain dicts, lists,
strings and numbers,
which the C side turns into JSON. None of it runs on any thread but the python thread,
except the stdout/stderr proxies, which app threads write through.

It is compiled into the daemon (lib/py_support.py -> generated C string), so it is the
same file a reader sees here.
"""

import ast
import fnmatch
import hashlib
import importlib
import io
import linecache
import os
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
# Deadline and interrupts. The C side defines _interrupt_due() in this module (while the
# running job is being interrupted, why: enum py_interrupt of py_host.h, else 0) and
# installs _deadline_handler for SIGUSR1, which CPython runs on the python thread between
# bytecodes and after a blocking call returns EINTR. Inside a Critical() section
# (rollback, patching: work that must never stop half way) the interrupt is deferred: the
# loop thread sends the signal again every second.

_critical_depth = 0

_INTERRUPTS = {
    1: (TimeoutError, "pyhot: the job passed its deadline"),
    2: (KeyboardInterrupt, None),  # the client's interrupt: Ctrl-C, as python3 raises it
    3: (KeyboardInterrupt, "pyhot: the client disconnected"),
    4: (KeyboardInterrupt, "pyhot: interrupted so that a waiting reload can run"),
}


def _deadline_handler(signum, frame):
    if _critical_depth == 0:
        reason = _interrupt_due()  # noqa: F821 (defined by py_host.c)
        if reason:
            kind, message = _INTERRUPTS[reason]
            raise kind(message) if message else kind()


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


def format_traceback(exc, hidden=_is_machinery):
    """The traceback of exc as the user's code sees it: frames whose file name hidden()
    accepts are left out; by default this module's and importlib's machinery (reload goes
    through it), as CPython leaves out importlib's frames from import errors."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not hidden(f.filename)]
    lines = []
    if frames:
        lines.append("Traceback (most recent call last):\n")
        lines.extend(traceback.format_list(frames))
    lines.extend(traceback.format_exception_only(type(exc), exc))
    return "".join(lines)


# An error's message and traceback go into events that the daemon keeps for history and
# sends to every subscriber: each is capped (characters), so that an exception carrying a
# megabyte of text cannot make every event that large (docs/protocol.md, "Errors").
MESSAGE_MAX = 8192
TRACEBACK_MAX = 16384


def _cap(text, limit, keep_tail):
    """text cut to at most limit characters and a marker; with keep_tail, the cut is in the
    middle (a traceback's end names the exception), else at the end."""
    if len(text) <= limit:
        return text, False
    cut = len(text) - limit
    marker = " [... %d characters cut by pyhot ...] " % cut
    if keep_tail:
        head = limit // 4
        return text[:head] + marker + text[len(text) - (limit - head):], True
    return text[:limit] + marker, True


def _cap_error(error):
    """Caps error's message and traceback in place; sets "truncated": true when it cut."""
    cut = False
    if isinstance(error.get("message"), str):
        error["message"], m = _cap(error["message"], MESSAGE_MAX, False)
        cut = cut or m
    if isinstance(error.get("traceback"), str):
        error["traceback"], t = _cap(error["traceback"], TRACEBACK_MAX, True)
        cut = cut or t
    if cut:
        error["truncated"] = True
    return error


def describe_exception(exc, prefer_file=None, hidden=_is_machinery):
    """The error object of the protocol for exc: {"type", "message", "file", "line",
    "traceback"} ("column" for a SyntaxError), the message and traceback capped at
    MESSAGE_MAX and TRACEBACK_MAX characters ("truncated": true when either was cut).

    file and line point at the SyntaxError's location, else at the innermost frame of
    prefer_file when the traceback passes through it (the module being reloaded), else
    at the innermost frame. Frames whose file name hidden() accepts are left out of both
    (format_traceback).
    """
    return _cap_error(_describe(exc, prefer_file, hidden))


def _describe(exc, prefer_file, hidden):
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ not in ("builtins", "__main__"):
        name = kind.__module__ + "." + name
    error = {
        "type": name,
        "message": str(exc),
        "file": None,
        "line": None,
        "traceback": format_traceback(exc, hidden),
    }
    if isinstance(exc, SyntaxError):
        error["message"] = exc.msg if exc.msg else str(exc)
        error["file"] = exc.filename
        error["line"] = exc.lineno
        error["column"] = exc.offset
        return error
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not hidden(f.filename)]
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
# exec: code in __main__'s namespace, output captured, the repr of the value of a final
# expression statement (as the REPL shows an expression's value, and IPython the last one
# of a cell).

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
        tree = ast.parse(source, filename, "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, filename, "exec", dont_inherit=True), namespace)
        if last is not None:
            value = eval(compile(last, filename, "eval", dont_inherit=True), namespace)
            if value is not None:
                reply["value"] = repr(value)
                namespace["_"] = value
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

class ModuleIndex:
    """Which loaded modules come from which watched file, and what content was last applied
    from each file. One instance, `index`; the reload engine (`_pyhot_reload`) reads it
    through these methods only.

    roots: realpaths of the watch roots. modules: module name -> (module object, realpath)
    of every watched module. by_path: realpath -> [module name, ...]. applied: realpath ->
    digest of the source last applied (imported or reloaded). generation grows whenever a
    watched module appears or leaves.
    """

    def __init__(self):
        self.roots = []
        self.modules = {}
        self.by_path = {}
        self.applied = {}
        self.generation = 0
        self.first_seen = {}  # module name -> when the index first saw it (a counter)
        self._seen_count = 0
        self._realpaths = {}  # origin string -> realpath (fixed once imported)
        self._seen = {}       # module name -> module object already looked at
        self._signature = None  # (len(sys.modules), last key) at the last full scan

    def under_roots(self, path):
        """Whether path (a realpath) is a watch root or lies under one."""
        for root in self.roots:
            if path == root or path.startswith(root + os.sep):
                return True
        return False

    def realpath(self, origin):
        """os.path.realpath(origin), cached: a loaded module's file does not move."""
        path = self._realpaths.get(origin)
        if path is None:
            path = os.path.realpath(origin)
            self._realpaths[origin] = path
        return path

    def modules_at(self, path):
        """The names of the watched modules loaded from path (a realpath); a list, maybe empty."""
        return self.by_path.get(path, ())

    def path_of(self, name):
        """The realpath of watched module name, or None."""
        entry = self.modules.get(name)
        return entry[1] if entry is not None else None

    def refresh(self):
        """Brings the index up to date with sys.modules; returns len(sys.modules).

        Incremental: only modules that appeared or were replaced since the last call are
        looked at, so the cost follows what changed, not the size of sys.modules. A module
        first seen under a root gets its file's digest recorded as applied, so a later save
        of the same content is recognised as unchanged.
        """
        # sys.modules is a dict: a new import appends a key, so its size and last key tell
        # whether anything was added or removed since the last scan. A module replaced in
        # place under the same name is caught by the callers' identity checks.
        signature = (len(sys.modules), next(reversed(sys.modules), None))
        if signature == self._signature:
            return signature[0]
        self._signature = signature
        current = dict(sys.modules)
        if len(self._seen) > 2 * len(current):
            self._seen.clear()
        for name in list(self.modules):
            entry = self.modules[name]
            if current.get(name) is not entry[0]:
                self._forget(name)
        for name, module in current.items():
            if module is None or self._seen.get(name) is module:
                continue
            self._seen[name] = module
            indexed = self.modules.get(name)
            if indexed is not None and indexed[0] is module:
                continue  # seen again after _seen was cleared (update_roots): indexed once
            origin = module_origin(module)
            if origin is None:
                continue
            path = self.realpath(origin)
            if not self.under_roots(path):
                continue
            self.modules[name] = (module, path)
            self.first_seen[name] = self._seen_count
            self._seen_count += 1
            self.generation += 1
            self.by_path.setdefault(path, []).append(name)
            if path not in self.applied:
                try:
                    self.applied[path] = digest(read_source(path))
                except OSError:
                    pass
        return len(current)

    def _forget(self, name):
        module, path = self.modules.pop(name)
        self.first_seen.pop(name, None)
        self.generation += 1
        names = self.by_path.get(path)
        if names is not None and name in names:
            names.remove(name)
            if not names:
                del self.by_path[path]

    def note_reordered(self, count):
        """importlib.reload moves a module's key to the end of sys.modules; when nothing was
        added or removed (the size is still count), the index is still current."""
        if self._signature is not None and self._signature[0] == count == len(sys.modules):
            self._signature = (count, next(reversed(sys.modules), None))

    def set_roots(self, added, removed):
        """Adds and removes watch roots (realpaths); modules under a removed root leave the
        index (they stay loaded)."""
        for real in removed:
            if real in self.roots:
                self.roots.remove(real)
        for name in [n for n, (_m, p) in self.modules.items() if not self.under_roots(p)]:
            self._forget(name)
        for real in added:
            if real not in self.roots:
                self.roots.append(real)
        self.generation += 1
        self._seen.clear()
        self._signature = None


index = ModuleIndex()


def loaded_files(since):
    """For the watcher's polled roots (the C side asks after every job): the realpaths of
    the watched modules' files as (generation, [path, ...]) when the index changed since
    generation `since`, else None."""
    index.refresh()
    if index.generation == since:
        return None
    return index.generation, list(index.by_path)


def configure(roots, paths, venv=None):
    """Puts the watch roots, then the extra paths, at the front of sys.path; with venv,
    makes the virtual environment's packages importable."""
    index.roots[:] = [os.path.realpath(r) for r in roots]
    if venv:
        _use_venv(venv)
    front = [p for p in list(index.roots) + [os.path.abspath(p) for p in paths]]
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


def module_origin(module):
    """The .py file module was loaded from (spec origin, else __file__), or None."""
    spec = getattr(module, "__spec__", None)
    origin = None
    if spec is not None and getattr(spec, "has_location", False):
        origin = spec.origin
    if not isinstance(origin, str):
        origin = getattr(module, "__file__", None)
    if not isinstance(origin, str) or not origin.endswith(".py"):
        return None
    return origin


def digest(data):
    """A 16-byte digest of data (bytes): equal digests mean equal content."""
    return hashlib.blake2b(data, digest_size=16).digest()


def read_source(path):
    """The bytes of the file at path; OSError as open() raises it. Plain system calls
    (open, fstat, read until end of file, close): on the save -> run path a buffered
    file object's set-up costs more than the read of a source file. Reads to an empty
    read, not a short one, since a FUSE or network file system may return short reads."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        want = os.fstat(fd).st_size + 1
        while True:
            chunk = os.read(fd, want)
            if not chunk:
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.append(chunk)
            want = 65536
    finally:
        os.close(fd)



def list_modules(pattern=None):
    index.refresh()
    result = []
    for name in sorted(sys.modules):
        if pattern is not None and not fnmatch.fnmatchcase(name, pattern):
            continue
        module = sys.modules[name]
        origin = module_origin(module) if module is not None else None
        if origin is None and module is not None:
            origin = getattr(module, "__file__", None)
            if not isinstance(origin, str):
                origin = None
        watched = name in index.modules
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
    return _import_modules(index.roots)


def _setup_django(errors):
    """django.setup() when DJANGO_SETTINGS_MODULE is set: a Django project's models and
    admin modules raise AppRegistryNotReady when imported before the app registry is
    populated (django/apps/registry.py, check_apps_ready). It imports the settings and the
    installed apps, as manage.py does before anything else."""
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        return
    try:
        import django
        django.setup()
    except BaseException as exc:
        error = describe_exception(exc)
        error["module"] = "django.setup"
        errors.append(error)


def _import_modules(roots):
    imported, errors = [], []
    _setup_django(errors)
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
    index.refresh()
    return {"imported": imported, "errors": errors, "modules_loaded": len(sys.modules)}


def update_roots(added, removed, import_modules):
    """A configuration reload's roots: removed ones leave sys.path and stop being
    reloadable (their modules stay loaded); added ones go first on sys.path and, with
    import_modules, their modules are imported."""
    removed_real = [os.path.realpath(r) for r in removed]
    added_real = [os.path.realpath(r) for r in added]
    for real in removed_real:
        if real in sys.path:
            sys.path.remove(real)
    index.set_roots(added_real, removed_real)
    for real in added_real:
        if real not in sys.path:
            sys.path.insert(0, real)
    result = {"imported": [], "errors": []}
    if import_modules and added:
        result = _import_modules(added_real)
    index.refresh()
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
        except BaseException as exc:
            sys.stderr.write("pyhot: entry %s raised:\n%s" % (entry, format_traceback(exc)))
            # file and line: the entry module's frame, where the app's code failed.
            origin = module_origin(sys.modules.get(module_name))
            _entry_ended({"entry": entry, "state": "failed",  # noqa: F821 (py_host.c)
                          "error": describe_exception(exc, prefer_file=origin)})
        else:
            _entry_ended({"entry": entry, "state": "returned"})  # noqa: F821 (py_host.c)

    thread = threading.Thread(target=run, name="pyhot-entry", daemon=True)
    thread.start()
    return {"ok": True, "thread": thread.name}


def resolve_targets(targets):
    """Maps reload targets (module names or file paths) to module names. Only modules loaded
    from under a watch root count: nothing outside the roots is ever reloaded.

    An explicit reload runs even when the content is unchanged, so paths become the
    names of the modules loaded from them. Returns {"names": [...], "unknown": [...]}.
    """
    index.refresh()
    names, unknown = [], []
    for target in targets:
        if target in index.modules:
            found = [target]
        elif os.sep in target or target.endswith(".py"):
            found = list(index.modules_at(os.path.realpath(target)))
        else:
            found = []
        if not found:
            unknown.append(target)
        for name in found:
            if name not in names:
                names.append(name)
    return {"names": names, "unknown": unknown}




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
