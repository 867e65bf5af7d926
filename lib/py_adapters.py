"""What pyhot's framework adapters share, run inside pyhotd as `_pyhot_adapters`.

An adapter (lib/py_adapter_*.py, one module per framework) keeps a framework's registries
in step with a reload through the public `pyhot` API only. It costs nothing while its
framework is not imported: it either checks sys.modules when a batch runs, or waits for
the framework's import through when_imported() below, and never imports the framework
itself. docs/reload.md ("Framework adapters") is the user's account.
"""

import sys
import threading
import weakref

_lock = threading.Lock()
_waiting = {}  # module name -> [callback(module)] not called yet


class _PostImportFinder:
    """A sys.meta_path entry that finds nothing itself: for a module somebody waits for, it
    asks the finders after it for the spec and wraps the loader's exec_module, so the
    callbacks run once the module is fully imported (PEP 451's find_spec/exec_module
    protocol; the post-import hooks of PEP 369, withdrawn, and of wrapt work this way)."""

    def find_spec(self, name, path=None, target=None):
        if name not in _waiting:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        spec.loader = _NotifyingLoader(loader)
        return spec


class _NotifyingLoader:
    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        # The module is in sys.modules under its name; the loader stays the real one for
        # importlib.reload and inspect.
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.loader is self:
            spec.loader = self._loader
        if getattr(module, "__loader__", None) is self:
            module.__loader__ = self._loader
        _notify(module.__name__)


_finder = _PostImportFinder()


def _notify(name):
    with _lock:
        callbacks = _waiting.pop(name, [])
    module = sys.modules.get(name)
    if module is None:
        return
    for callback in callbacks:
        try:
            callback(module)
        except Exception as exc:  # an adapter's bug must not break the app's import
            sys.stderr.write("pyhot: the %s adapter failed to start: %r\n" % (name, exc))


def when_imported(name, callback):
    """Calls callback(module) once module name is imported: at once when it already is,
    else right after its import completes (on the importing thread). Never imports it."""
    with _lock:
        if name not in sys.modules:
            _waiting.setdefault(name, []).append(callback)
            if _finder not in sys.meta_path:
                sys.meta_path.insert(0, _finder)
            return
    _notify_now(name, callback)


def _notify_now(name, callback):
    try:
        callback(sys.modules[name])
    except Exception as exc:
        sys.stderr.write("pyhot: the %s adapter failed to start: %r\n" % (name, exc))


class Instances:
    """Weak references to objects of a framework (routers, apps), by identity: unlike a
    WeakSet it takes objects that define __eq__ without __hash__ (Starlette's Router,
    aiohttp's UrlDispatcher, a Mapping)."""

    def __init__(self):
        self._refs = []

    def add(self, obj):
        if len(self._refs) >= 64:
            self._refs = [r for r in self._refs if r() is not None]
        self._refs.append(weakref.ref(obj))

    def __iter__(self):
        """The objects still alive, in the order they were added (a list: safe to change
        the collection while iterating)."""
        return iter([obj for obj in (r() for r in self._refs) if obj is not None])

    def __bool__(self):
        return any(r() is not None for r in self._refs)


def definition_of(obj):
    """(module, qualname) of a function or class, the key the engine's BatchInfo lists use
    ("module.qualname"); None when obj has none."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None
    return module, qualname


def qualified_name(obj):
    key = definition_of(obj)
    return None if key is None else key[0] + "." + key[1]


def unwrap(fn):
    """The innermost function of a functools.wraps chain."""
    seen = set()
    while hasattr(fn, "__wrapped__") and id(fn) not in seen:
        seen.add(id(fn))
        fn = fn.__wrapped__
    return fn


class ClassPatch:
    """Replaces attributes of a class for the length of one batch: apply() sets them and
    registers their restoration with info.on_rollback; restore() puts them back when the
    batch applied. The attributes a class defines itself are kept exactly (its __dict__
    entry), the inherited ones are deleted again."""

    def __init__(self):
        self._saved = []  # (cls, name, value or _MISSING)

    def apply(self, info, cls, **replacements):
        for name, value in replacements.items():
            self._saved.append((cls, name, cls.__dict__.get(name, _MISSING)))
            setattr(cls, name, value)
        info.on_rollback(self.restore)

    def restore(self):
        saved, self._saved = self._saved, []
        for cls, name, value in reversed(saved):
            if value is _MISSING:
                try:
                    delattr(cls, name)
                except AttributeError:
                    pass
            else:
                setattr(cls, name, value)


_MISSING = object()
