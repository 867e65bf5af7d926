"""pyhot: the in-daemon API of pyhotd.

`import pyhot` works in every piece of code pyhotd runs: the app (`--entry`), `exec`,
`run`, the REPL and plugins. It lets code that keeps its own registries (routes, commands,
handlers, caches) follow a reload, the way pyhot's framework adapters do for Flask,
FastAPI, Django, aiohttp and SQLAlchemy (docs/reload.md, "Framework adapters").

    import pyhot

    @pyhot.after_reload
    def refresh_commands(info):
        for name in info.patched + info.added:
            ...

A hook receives one `BatchInfo`. Hooks run on the daemon's python thread, inside the
batch: while a hook runs, no other reload or `exec` runs, and app threads keep running.
A hook that raises rolls the whole batch back (its error is reported as the batch's
error), so a hook must raise only when the batch must not apply.

Hooks are kept by the definition that registered them (module and qualified name): when
the module that registers a hook runs that registration again (a changed decorator line,
or `mode = module`), the new function takes the old one's place instead of running twice.

Plugins (docs/plugins.md): `pyhot.plugins` is a read-only mapping, plugin name -> its
exports (a read-only mapping of the names its file defines), and `pyhot.on_plugin(callback)`
tells the app about each plugin loaded, reloaded, failed or removed. They are the plugin
host's (lib/py_plugins.py, `_pyhot_plugins`), which the daemon loads before this module.

This module is compiled into the daemon (lib/py_api.py); it is the same file a reader
sees there. Its names are stable: new ones are added, none is renamed or removed.
"""

import _pyhot_reload
from _pyhot_plugins import on_plugin, plugins

__all__ = ["BatchInfo", "after_reload", "before_reload", "on_plugin", "plugins", "remove_hook"]

BatchInfo = _pyhot_reload.BatchInfo
BatchInfo.__doc__ = """What a reload batch does, as the hooks of pyhot see it.

Attributes (read them; changing them changes nothing):
  batch     int: the batch id, as in the `batch` and `reload` events (negative for a
            batch that the app's own importlib.reload started).
  paths     tuple of str: the changed files (real paths) that made the batch.
  modules   tuple of str: the modules the batch runs, in the order they run.
  patched   list of str: "module.qualname" of the functions and classes that took new
            code in place (the same objects, now running the new code).
  replaced  list of str: "module.qualname" of what was replaced by a new object (an enum,
            a class whose bases changed, ...): references held elsewhere keep the old one.
  added     list of str: "module.qualname" of the names the batch defined for the first
            time.
  removed   list of str: "module.qualname" of the names the new sources no longer define.
  mode      str: "definitions" (only changed statements run) or "module" (whole modules
            run again; `[reload] mode`).

In a before_reload hook, patched, replaced, added and removed are empty (no code has run
yet); in an after_reload hook they are complete.

on_rollback(fn): registers fn (no arguments) to run if the batch rolls back after this
point; such callables run in the reverse order of registration, after the batch's own
changes are undone. Use it to undo whatever the hook changed outside the modules of the
batch (a route added to a served app, a cache cleared); it is not called when the batch
applies.
"""

_hooks = {"before": [], "after": []}  # when -> [callback], in registration order


def _definition(callback):
    module = getattr(callback, "__module__", None)
    qualname = getattr(callback, "__qualname__", None)
    if module is None or qualname is None or "<locals>" in qualname or "<lambda>" in qualname:
        return None
    return module, qualname


def _register(when, callback):
    if not callable(callback):
        raise TypeError("a %s_reload hook must be callable, not %s" % (when, type(callback).__name__))
    key = _definition(callback)
    hooks = _hooks[when]
    for old in list(hooks):
        if old is callback or (key is not None and _definition(old) == key):
            hooks.remove(old)
            _unregister(when, old)
    hooks.append(callback)
    return _pyhot_reload.add_hook(when, callback)


def _unregister(when, callback):
    try:
        _pyhot_reload.remove_hook(when, callback)
    except ValueError:  # already removed from the engine directly
        pass


def before_reload(callback):
    """Registers callback(info) to run before each batch's code runs; returns callback,
    so it works as a decorator.

    It runs after the plan is made and every changed source has compiled, before any
    module of the batch runs: the old code is still in place. info is a BatchInfo. Raising
    cancels the batch (nothing of it applies; the old code keeps running). Use
    info.on_rollback() to undo what the hook changes, should a later step fail.
    """
    return _register("before", callback)


def after_reload(callback):
    """Registers callback(info) to run after each batch's code ran; returns callback, so
    it works as a decorator.

    It runs once every module of the batch has run, before the batch is committed: the
    new code is in place and the events are not sent yet. info is a BatchInfo. Raising
    rolls the whole batch back, this hook's own changes included when it registered them
    with info.on_rollback().
    """
    return _register("after", callback)


def remove_hook(callback):
    """Removes callback from the before_reload and after_reload hooks; returns True when
    it was registered."""
    found = False
    for when, hooks in _hooks.items():
        if callback in hooks:
            hooks.remove(callback)
            _unregister(when, callback)
            found = True
    return found
