"""pyhot's plugin host, run inside pyhotd's interpreter as `_pyhot_plugins`.

A plugin is a file of a plugin directory ([plugins] dir, --plugins) whose name matches the
pattern (plugin_*.py by default). It runs with runpy.run_path, the host's API injected as
its globals (init_globals from [plugins] api = MODULE:ATTR), and what it defines at top
level and does not hide (its public names, or __all__) becomes its exports. A saved plugin
runs again in a fresh namespace; its exports are swapped only when that run succeeds, so a
plugin that raises, has a syntax error, calls sys.exit() or passes the reload deadline
keeps its previous exports. docs/plugins.md is the user's version.

The C side (lib/py_plugins.c, lib/plugins.c) runs `load(path, api)` once per changed file
on the python thread, under the reload deadline, and turns its result into a `plugin`
event. Apps read `pyhot.plugins` (a read-only mapping: name -> read-only mapping of
exports) and register `pyhot.on_plugin(callback)`; both are defined here.
"""

import collections.abc
import hashlib
import os
import sys
import time
import traceback
import types

_plugins = {}      # name -> _Plugin, every plugin file seen and not removed
_callbacks = []    # on_plugin callbacks, in registration order


class _Plugin:
    """One plugin file: its exports (None until a run succeeded), the digest of the source
    that produced them, and the outcome of its last run."""

    def __init__(self, name, path):
        self.name = name
        self.path = path
        self.exports = None       # types.MappingProxyType, swapped whole
        self.digest = None        # of the source the exports came from
        self.loaded_at = None     # time.time() of the last successful run
        self.error = None         # the last run's error object, None after a success

    def describe(self):
        return {
            "name": self.name,
            "path": self.path,
            "state": "loaded" if self.error is None else "error",
            "exports": sorted(self.exports) if self.exports is not None else [],
            "loaded_at": _rfc3339(self.loaded_at) if self.loaded_at is not None else None,
            "error": self.error,
        }


class PluginsView(collections.abc.Mapping):
    """`pyhot.plugins`: plugin name (the file's stem) -> its exports, a read-only mapping.

    Only plugins that ran successfully at least once are in it; one whose last edit failed
    keeps its previous exports. Look a plugin up at each use (`pyhot.plugins["x"]["f"]`)
    rather than keeping what you found: a reload swaps the exports mapping as a whole."""

    def __getitem__(self, name):
        plugin = _plugins.get(name)
        if plugin is None or plugin.exports is None:
            raise KeyError(name)
        return plugin.exports

    def __iter__(self):
        return iter(sorted(n for n, p in list(_plugins.items()) if p.exports is not None))

    def __len__(self):
        return sum(1 for p in list(_plugins.values()) if p.exports is not None)

    def __repr__(self):
        return "<pyhot.plugins %r>" % sorted(self)


plugins = PluginsView()


def on_plugin(callback):
    """Calls callback(event) after each plugin event, on the daemon's python thread:
    event is a dict with "name", "path", "result" ("loaded", "reloaded", "error" or
    "removed"), "duration_ms", "exports" (the plugin's exports now, a read-only mapping, or
    None) and "error" (type, message, file, line, traceback; None unless result is
    "error"). A callback with the same module and qualified name as one registered before
    replaces it, so a module that registers at import may be reloaded. An exception in a
    callback is printed to the daemon's stderr and changes nothing else. Returns callback,
    so it serves as a decorator."""
    if not callable(callback):
        raise TypeError("on_plugin() needs a callable, not %s" % type(callback).__name__)
    key = _callback_key(callback)
    for i, known in enumerate(_callbacks):
        if key is not None and _callback_key(known) == key:
            _callbacks[i] = callback
            return callback
    _callbacks.append(callback)
    return callback


def _callback_key(callback):
    module = getattr(callback, "__module__", None)
    qualname = getattr(callback, "__qualname__", None)
    if module is None or qualname is None or "<lambda>" in qualname or "<locals>" in qualname:
        return None
    return (module, qualname)


def _notify(event, plugin):
    public = dict(event)
    public["exports"] = plugin.exports if event["result"] != "removed" else None
    public.setdefault("error", None)
    for callback in list(_callbacks):
        try:
            callback(public)
        except Exception:
            sys.stderr.write("pyhot: on_plugin callback %r raised:\n%s"
                             % (callback, traceback.format_exc()))


# ---------------------------------------------------------------------------------------

def _api_globals(api):
    """The dict named by [plugins] api ("MODULE:ATTR"), copied: a plugin gets its items as
    globals and cannot rebind the host's entries. Looked up at each load, so the app may
    fill it after start."""
    if not api:
        return {}
    import importlib
    module_name, _, attr = api.partition(":")
    value = getattr(importlib.import_module(module_name), attr)
    if not isinstance(value, collections.abc.Mapping):
        raise TypeError("[plugins] api %s is a %s, not a dict" % (api, type(value).__name__))
    return dict(value)


def _public_names(namespace, injected):
    """__all__ when the plugin defines it; else the names not starting with "_", less the
    modules it imported and the injected globals it left as they were."""
    declared = namespace.get("__all__")
    if isinstance(declared, (list, tuple)) and all(isinstance(n, str) for n in declared):
        return [n for n in declared if n in namespace]
    names = []
    for name, value in namespace.items():
        if name.startswith("_") or isinstance(value, types.ModuleType):
            continue
        if name in injected and injected[name] is value:
            continue
        names.append(name)
    return names


def _is_machinery(filename):
    return (filename.startswith("<pyhot>/") or filename.startswith("<frozen ")
            or filename.endswith(os.sep + "runpy.py"))


def _describe(exc, path):
    """The error object of a failed run, frames of runpy and pyhot left out."""
    import _pyhot
    error = _pyhot.describe_exception(exc, prefer_file=path, hidden=_is_machinery)
    if isinstance(exc, SystemExit):
        error["message"] = "the plugin called sys.exit(%s)" % ("" if exc.code is None else repr(exc.code))
    return error


def _rfc3339(seconds):
    """As the protocol's event times: 2026-12-02T13:31:20.123Z."""
    whole = int(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + ".%03dZ" % int(
        (seconds - whole) * 1000)


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.blake2b(f.read(), digest_size=16).hexdigest()


def load(path, api=None):
    """Loads, reloads or unloads the plugin file at path (absolute), as its state on disk
    says. Returns {"event": {...} | None, "plugin": {...} | None}: the plugin event
    (name, path, result, duration_ms, error when it failed) and the plugin's state after it
    (None once removed); event None when nothing changed (content equal to what the
    loaded exports came from)."""
    started = time.monotonic()
    name = os.path.splitext(os.path.basename(path))[0]
    plugin = _plugins.get(name)
    if plugin is not None and plugin.path != path:
        if not os.path.exists(path):
            return {"event": None, "plugin": plugin.describe()}
        return {"event": {
            "name": name, "path": path, "result": "error", "duration_ms": 0.0,
            "error": {"type": "ValueError", "file": path, "line": None, "traceback": "",
                      "message": "plugin name %s is taken by %s" % (name, plugin.path)}},
            "plugin": None}

    if not os.path.isfile(path):
        if plugin is None:
            return {"event": None, "plugin": None}
        del _plugins[name]
        event = {"name": name, "path": path, "result": "removed",
                 "duration_ms": (time.monotonic() - started) * 1000.0}
        _notify(event, plugin)
        return {"event": event, "plugin": None}

    try:
        digest = _digest(path)
    except OSError as exc:
        digest = None
        read_error = exc
    else:
        read_error = None
    if plugin is not None and plugin.error is None and digest == plugin.digest:
        return {"event": None, "plugin": plugin.describe()}
    if plugin is None:
        plugin = _Plugin(name, path)
        _plugins[name] = plugin
    first = plugin.exports is None

    import _pyhot
    try:
        if read_error is not None:
            raise read_error
        injected = _api_globals(api)
        import runpy
        namespace = runpy.run_path(path, init_globals=injected, run_name="pyhot.plugins." + name)
        exports = {n: namespace[n] for n in _public_names(namespace, injected)}
        with _pyhot.Critical():
            plugin.exports = types.MappingProxyType(exports)
            plugin.digest = digest
            plugin.loaded_at = time.time()
            plugin.error = None
        result = "loaded" if first else "reloaded"
        error = None
    except BaseException as exc:  # SystemExit and the deadline's TimeoutError included
        error = _describe(exc, path)
        plugin.error = error
        result = "error"
    event = {"name": name, "path": path, "result": result,
             "duration_ms": (time.monotonic() - started) * 1000.0}
    if error is not None:
        event["error"] = error
    _notify(event, plugin)
    return {"event": event, "plugin": plugin.describe()}
