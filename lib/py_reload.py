"""pyhot's reload engine, run inside pyhotd's interpreter as `_pyhot_reload`.

docs/reload.md is the user's account of these rules; this module is their implementation.
A batch goes through: plan (the changed modules, then their dependents, in dependency
order), pre-check (every changed source compiled), run (each module's namespace
snapshotted, then its definition-level update applied in it, or in whole-module mode its
new top level run by importlib.reload with the code compiled here; its functions and
classes patched in place at once), and, if anything raised, rollback (every
namespace, function and class the batch touched restored). It runs on the python thread
only, with the GIL held, called from lib/py_reload.c.
"""

import __future__
import abc
import ast
import builtins
import copy
import difflib
import dis
import enum
import gc
import importlib
import importlib._bootstrap_external as _bootstrap_external
import importlib.util
import os
import re
import sys
import threading
import time
import types
import weakref

import _pyhot

_MISSING = object()
_index = _pyhot.index  # watched modules, their files, applied digests (py_support.py)

# ---------------------------------------------------------------------------------------
# The loader. importlib.reload keeps its semantics (spec re-found, module attributes
# re-initialised, the module object kept), and stays the entry point for the app and
# `exec`, and for the engine's whole-module runs. exec_module of a watched module that is
# already loaded is where the engine takes over: inside a batch it performs that module's
# update (a definition-level update, or the whole top level with the code compiled by the
# batch); a reload started by anyone else becomes a batch of its own. (The engine applies
# a definition-level update of its own batch directly: Engine.run_module.) get_code compiles a watched
# module's first import from the bytes whose digest is recorded as applied, never a .pyc:
# SourceLoader.get_code would accept a cached .pyc whose recorded source mtime (whole
# seconds) and size still match an edited file.

_code_overrides = {}  # realpath -> code object, only while a module-mode batch runs
_first_runs = {}      # module name -> (realpath, source bytes, code) of its first import
_loaded = weakref.WeakValueDictionary()  # module name -> the module whose first import finished
_import_began = {}    # module name -> when its first import began (a counter): cycle order
_original_get_code = _bootstrap_external.SourceLoader.get_code
_original_exec_module = _bootstrap_external._LoaderBasics.exec_module


def _get_code(self, fullname, _original=_original_get_code):
    path = self.get_filename(fullname)
    real = _index.realpath(path)
    if _code_overrides:
        code = _code_overrides.get(real)
        if code is not None:
            return code
    if not _index.under_roots(real):
        return _original(self, fullname)
    # So what counts as applied is exactly what ran (a .pyc could be stale, and reading
    # the file again later could see an edit made meanwhile).
    data = self.get_data(path)
    code = compile(data, path, "exec", dont_inherit=True)
    _index.applied[real] = _pyhot.digest(data)
    _first_runs[fullname] = (real, data, code)
    _record_imports(fullname, real, code=code)
    return code


def _exec_module(self, module, _original=_original_exec_module):
    name = getattr(module, "__name__", None)
    run = _active
    if run is not None and run.thread != threading.get_ident():
        run = None  # another thread's batch: this reload waits for it (the engine's lock)
    if run is not None and run.module is module:
        if run.definitions is not None:
            run.definitions.apply(run)
            return
        return _original(self, module)
    if (_loaded.get(name) is not module or sys.modules.get(name) is not module or run is not None
            or not _watched(module)):
        # A first import, or a reload the engine does not take: of a module outside the
        # watch roots, or started by a module's top level while a batch runs (it runs
        # whole, inside that batch).
        if _loaded.get(name) is not module:
            _import_began.setdefault(name, len(_import_began))
        _original(self, module)
        _loaded[name] = module
        return
    # importlib.reload(m) from the app or `exec`: the same path as a save, as a batch.
    outcome = engine.reload_modules([name])
    exc = outcome.get("exception")
    if exc is not None:
        raise exc


def _watched(module):
    origin = _pyhot.module_origin(module)
    return origin is not None and _index.under_roots(_index.realpath(origin))


_bootstrap_external.SourceLoader.get_code = _get_code
_bootstrap_external._LoaderBasics.exec_module = _exec_module


# ---------------------------------------------------------------------------------------
# The import graph: module -> the watched modules its import statements name, read from
# the module's compiled code (so `from a import CONST` of a plain value counts, and an
# import inside a function too). A module's entry is computed when the graph first needs
# it (from its loader's code) and again from the code each reload compiles, so the graph
# stays current as modules are imported and reloaded.
#
# CPython 3.11 compiles `import a.b` and `from .a import b, c` to LOAD_CONST level,
# LOAD_CONST fromlist, IMPORT_NAME name (Python/compile.c: compiler_import,
# compiler_from_import); where that shape is not found, the source is parsed with ast.

_IMPORT_NAME = dis.opmap["IMPORT_NAME"]
_IMPORT_NAME_BYTE = bytes([_IMPORT_NAME])
_LOAD_CONST = dis.opmap["LOAD_CONST"]
_EXTENDED_ARG = dis.EXTENDED_ARG

_imports = {}  # module name -> frozenset of absolute module names it imports
_imports_generation = 0  # bumped whenever an entry of _imports changes


def _resolve_relative(module_name, is_package, level, target):
    package = module_name if is_package else module_name.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    if not package:
        return None
    return package + "." + target if target else package


def _add_import(names, module_name, is_package, name, level, fromlist):
    base = _resolve_relative(module_name, is_package, level, name) if level else name
    if not base:
        return
    names.add(base)
    for item in fromlist or ():
        if isinstance(item, str) and item != "*":
            names.add(base + "." + item)  # a submodule, if there is one


def _code_imports(code, module_name, is_package, names):
    """Adds what code (and the code objects nested in it) imports; False when an import's
    shape was not the expected one."""
    raw = code.co_code
    exact = True
    pos = raw.find(_IMPORT_NAME_BYTE)
    while pos != -1:
        if pos % 2 == 0:
            arg = raw[pos + 1]
            shift = pos
            if shift >= 2 and raw[shift - 2] == _EXTENDED_ARG:
                arg |= raw[shift - 1] << 8
                shift -= 2
            if shift >= 4 and raw[shift - 2] == _LOAD_CONST and raw[shift - 4] == _LOAD_CONST:
                fromlist = code.co_consts[raw[shift - 1]]
                level = code.co_consts[raw[shift - 3]]
                if isinstance(level, int) and (fromlist is None or isinstance(fromlist, tuple)):
                    _add_import(names, module_name, is_package, code.co_names[arg], level, fromlist)
                else:
                    exact = False
            else:
                exact = False
        pos = raw.find(_IMPORT_NAME_BYTE, pos + 1)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            exact = _code_imports(const, module_name, is_package, names) and exact
    return exact


def _tree_imports(names, module_name, is_package, tree):
    """Adds to names the modules that the import statements of tree (an ast node) name."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            _add_import(names, module_name, is_package, node.module, node.level,
                        tuple(alias.name for alias in node.names))


def _source_imports(module_name, is_package, source):
    names = set()
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return names
    _tree_imports(names, module_name, is_package, tree)
    return names


def _set_imports(name, names):
    """Makes names (minus name itself) the module's entry of the import graph; a change
    bumps the generation that the graph cache is keyed on."""
    global _imports_generation
    names.discard(name)
    names = frozenset(names)
    if _imports.get(name) != names:
        _imports[name] = names
        _imports_generation += 1


def _record_imports(name, path, code=None, source=None):
    is_package = os.path.basename(path) == "__init__.py"
    names = set()
    try:
        if code is None:
            module = sys.modules.get(name)
            loader = getattr(getattr(module, "__spec__", None), "loader", None)
            code = _original_get_code(loader, name) if loader is not None else None
        exact = code is not None and _code_imports(code, name, is_package, names)
    except Exception:
        exact = False
    if not exact:
        try:
            names |= _source_imports(name, is_package,
                                     source if source is not None else _pyhot.read_source(path))
        except OSError:
            pass
    _set_imports(name, names)


_graph_cache = [None, None]  # [(watched modules, imports) it was built from, graph]


def _dependency_graph():
    """{watched module: set of watched modules it imports}. Rebuilt only when a module
    appeared or left, or one's imports changed, since it was last built."""
    watched = _index.modules
    if _graph_cache[0] == (_index.generation, _imports_generation):
        return _graph_cache[1]
    for name, (_module, path) in list(watched.items()):
        if name not in _imports:
            _record_imports(name, path)
    key = (_index.generation, _imports_generation)
    graph = {name: {dep for dep in _imports[name] if dep in watched} for name in watched}
    _graph_cache[0], _graph_cache[1] = key, graph
    return graph


def _plan_order(changed, graph, with_dependents):
    """The modules to run: changed, plus (with_dependents) every watched module that
    imports one of them, transitively; each once, a module after everything it imports.
    Import cycles become one group each, run in the order the modules' first imports
    began (a.py, which imports b.py, which imports a.py: a, then b); no reload or rollback
    changes it."""
    selected = set(changed)
    if len(changed) == 1 and not any(changed[0] in deps for deps in graph.values()):
        return list(changed)  # the common edit: one module nothing imports
    if with_dependents:
        importers = {}
        for name, deps in graph.items():
            for dep in deps:
                importers.setdefault(dep, set()).add(name)
        stack = list(changed)
        while stack:
            for importer in importers.get(stack.pop(), ()):
                if importer not in selected:
                    selected.add(importer)
                    stack.append(importer)

    first_seen = _index.first_seen
    last = len(_import_began)

    def import_order(name):
        return (_import_began.get(name, last), first_seen.get(name, 0))
    nodes = sorted(selected, key=import_order)
    edges = {n: [d for d in graph.get(n, ()) if d in selected] for n in nodes}

    # Tarjan's strongly connected components; emitted dependencies first.
    index, low, on_stack, stack, order = {}, {}, set(), [], []
    counter = [0]

    def connect(node):
        work = [(node, iter(edges[node]))]
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        while work:
            current, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                    advanced = True
                    break
                if child in on_stack:
                    low[current] = min(low[current], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[current])
            if low[current] == index[current]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == current:
                        break
                group.sort(key=import_order)
                order.extend(group)

    for node in nodes:
        if node not in index:
            connect(node)
    return order


# ---------------------------------------------------------------------------------------
# Undo log: everything a batch changes outside a module namespace (function attributes,
# class dictionaries, cells) is recorded before it changes, so a rollback can put it back.

_FUNCTION_ATTRS = ("__code__", "__defaults__", "__kwdefaults__", "__annotations__", "__doc__")
_CLASS_SKIP = ("__dict__", "__weakref__")
# Members the class statement itself makes, whatever its body says.
_CLASS_KEEP = frozenset(("__module__", "__qualname__", "__doc__", "__dict__", "__weakref__",
                         "__annotations__", "__slots__", "__orig_bases__", "__parameters__",
                         "_abc_impl", "__abstractmethods__"))


class _Undo:
    def __init__(self):
        self.functions = {}  # id -> (function, saved attributes, saved __dict__)
        self.classes = {}    # id -> (class, saved dict)
        self.cells = []      # (cell, old contents)

    def function(self, fn):
        if id(fn) not in self.functions:
            saved = (fn.__code__, fn.__defaults__, fn.__kwdefaults__, fn.__annotations__, fn.__doc__)
            self.functions[id(fn)] = (fn, saved, dict(fn.__dict__))

    def klass(self, cls):
        """Records cls's members before the batch first changes them; returns a copy of
        its members as they are now."""
        saved = self.classes.get(id(cls))
        if saved is None:
            members = dict(cls.__dict__)
            self.classes[id(cls)] = (cls, members)
            return dict(members)
        return dict(cls.__dict__)

    def cell(self, cell):
        try:
            self.cells.append((cell, cell.cell_contents))
        except ValueError:
            self.cells.append((cell, _MISSING))

    def restore(self):
        for cell, contents in reversed(self.cells):
            if contents is _MISSING:
                try:
                    del cell.cell_contents
                except ValueError:
                    pass
            else:
                cell.cell_contents = contents
        for fn, saved, saved_dict in self.functions.values():
            for attr, value in zip(_FUNCTION_ATTRS, saved):
                try:
                    setattr(fn, attr, value)
                except (TypeError, ValueError, AttributeError):
                    pass
            fn.__dict__.clear()
            fn.__dict__.update(saved_dict)
        for cls, saved in self.classes.values():
            for key in [k for k in cls.__dict__ if k not in saved and k not in _CLASS_SKIP]:
                try:
                    delattr(cls, key)
                except (AttributeError, TypeError):
                    pass
            for key, value in saved.items():
                if key in _CLASS_SKIP:
                    continue
                try:
                    setattr(cls, key, value)
                except (AttributeError, TypeError):
                    pass


# ---------------------------------------------------------------------------------------
# Patching: old objects take the new code, so every reference held anywhere (callbacks,
# `from m import f`, live instances) runs the new code, and identity is kept.

class _Report:
    """What one module's update did, by qualified name ("module.qualname"): patched in
    place, replaced (with the reason apart), added, removed."""

    def __init__(self):
        self.patched = []
        self.replaced = []
        self.reasons = {}  # replaced name -> why it could not be patched
        self.added = []
        self.removed = []

    def add_patched(self, name):
        if name not in self.patched:
            self.patched.append(name)

    def add_replaced(self, name, reason):
        if name not in self.reasons:
            self.replaced.append(name)
            self.reasons[name] = reason


def _closure_map(fn):
    return dict(zip(fn.__code__.co_freevars, fn.__closure__ or ()))


def _patch_function(old, new, undo, seen):
    """Gives old the code and attributes of new. Functions held in its closure cells
    (decorators' wrapped functions) and its __wrapped__ are patched the same way; other
    cells keep their values, so state a decorator captured (a cache) survives. Returns
    False, changing nothing, when the free variables differ: the closure would not fit
    the new code, so new must replace old."""
    if old is new or id(old) in seen:
        return True
    old_code, new_code = old.__code__, new.__code__
    if old_code.co_freevars != new_code.co_freevars:
        return False
    seen.add(id(old))
    if (not old_code.co_freevars and old_code == new_code and not new.__dict__
            and _same_value(old.__defaults__, new.__defaults__)
            and _safe_equal(old.__kwdefaults__, new.__kwdefaults__)
            and old.__doc__ == new.__doc__ and _safe_equal(old.__annotations__, new.__annotations__)):
        # The common case in an edited module: this function did not change. Code objects
        # compare equal only when bytecode, constants, names and line numbers all do
        # (Objects/codeobject.c, code_richcompare), so the old function already is the new.
        return True
    old_cells = _closure_map(old) if old_code.co_freevars else {}
    new_cells = _closure_map(new) if old_cells else {}
    for name, old_cell in old_cells.items():
        if name == "__class__":
            continue  # stays pointing at the old (updated) class
        try:
            inner_old, inner_new = old_cell.cell_contents, new_cells[name].cell_contents
        except (ValueError, KeyError):
            continue
        if isinstance(inner_old, types.FunctionType) and isinstance(inner_new, types.FunctionType):
            if not _patch_function(inner_old, inner_new, undo, seen):
                undo.cell(old_cell)
                old_cell.cell_contents = inner_new
    undo.function(old)
    old_dict, new_dict = old.__dict__, new.__dict__
    old_wrapped = old_dict.get("__wrapped__", _MISSING)
    new_wrapped = new_dict.get("__wrapped__", _MISSING)
    old.__code__ = new_code
    old.__defaults__ = new.__defaults__
    old.__kwdefaults__ = new.__kwdefaults__
    old.__annotations__ = new.__annotations__
    old.__doc__ = new.__doc__
    if new_dict:
        old_dict.update(new_dict)
    if (isinstance(old_wrapped, types.FunctionType) and isinstance(new_wrapped, types.FunctionType)
            and _patch_function(old_wrapped, new_wrapped, undo, seen)):
        old.__dict__["__wrapped__"] = old_wrapped
    return True


def _safe_equal(a, b):
    """a == b for values whose == may raise or not return a bool (numpy arrays in a dict of
    annotations or keyword defaults): False then."""
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:
        return False


def _point_class_cells(fn, new_cls, old_cls, undo):
    """A function compiled for new_cls whose __class__ cell (what super() uses) names
    new_cls must name old_cls once it lives in old_cls."""
    cell = _closure_map(fn).get("__class__") if isinstance(fn, types.FunctionType) else None
    if cell is not None:
        try:
            if cell.cell_contents is new_cls:
                undo.cell(cell)
                cell.cell_contents = old_cls
        except ValueError:
            pass


def _functions_of(member):
    if isinstance(member, types.FunctionType):
        return [member]
    if isinstance(member, (staticmethod, classmethod)):
        return _functions_of(member.__func__)
    if isinstance(member, property):
        return [f for f in (member.fget, member.fset, member.fdel) if isinstance(f, types.FunctionType)]
    return []


_PLAIN_VALUES = (str, int, float, bool, type(None), tuple, bytes)


def _merge_member(prev, value, qualname, undo, report, seen):
    """The object a class should hold for one member after the update: prev, patched with
    value's code, when that keeps behaviour exact; else value."""
    if prev is _MISSING or prev is value or isinstance(value, _PLAIN_VALUES):
        return value
    if isinstance(prev, types.FunctionType) and isinstance(value, types.FunctionType):
        if _patch_function(prev, value, undo, seen):
            return prev
        report.add_replaced(qualname, "free variables changed")
        return value
    if type(prev) is type(value) and isinstance(prev, (staticmethod, classmethod)):
        if (isinstance(prev.__func__, types.FunctionType) and isinstance(value.__func__, types.FunctionType)
                and _patch_function(prev.__func__, value.__func__, undo, seen)):
            return prev
        return value
    if type(prev) is property and type(value) is property:
        if prev.__doc__ != value.__doc__:
            return value
        for a, b in ((prev.fget, value.fget), (prev.fset, value.fset), (prev.fdel, value.fdel)):
            if a is None and b is None:
                continue
            if not (isinstance(a, types.FunctionType) and isinstance(b, types.FunctionType)
                    and _patch_function(a, b, undo, seen)):
                return value
        return prev
    return value


def _update_class(old, namespace, new_cls, undo, report, seen, only=None, remove=None):
    """Makes old hold the members in namespace (a class body's result, or new_cls's
    dict): new and changed members set, removed ones deleted. Functions that super()
    would resolve through new_cls are pointed at old. With only (a set of member names),
    just those are set and just the names in remove deleted: a definition-level update,
    where the other statements of the body did not change."""
    current = undo.klass(old)
    qual = old.__module__ + "." + old.__qualname__
    is_abc = isinstance(old, abc.ABCMeta)
    for key, value in namespace.items():
        if key in _CLASS_SKIP or key == "__classcell__" or (is_abc and key == "_abc_impl"):
            continue
        if only is not None and key not in only:
            continue
        prev = current.get(key, _MISSING)
        store = _merge_member(prev, value, qual + "." + key, undo, report, seen)
        if new_cls is not None:
            # Merged from a class that was built (not run through _build_class): its
            # functions' __class__ cells name it.
            for fn in _functions_of(store):
                _point_class_cells(fn, new_cls, old, undo)
        if prev is not store and not _same_value(prev, store):
            try:
                setattr(old, key, store)
            except (AttributeError, TypeError):
                pass
    for key in (current.keys() - namespace.keys()) if remove is None else (remove & current.keys()):
        if key in _CLASS_SKIP or key == "__doc__" or (is_abc and key in ("_abc_impl", "__abstractmethods__")):
            continue
        try:
            delattr(old, key)
        except (AttributeError, TypeError):
            pass
    if only is None and "__doc__" not in namespace and old.__dict__.get("__doc__") is not None:
        old.__doc__ = None
    if is_abc:
        abc.update_abstractmethods(old)
    report.add_patched(qual)


def _is_heap_class(obj):
    return isinstance(obj, type) and bool(obj.__flags__ & (1 << 9))  # Py_TPFLAGS_HEAPTYPE


def _class_updatable(old, new):
    """Whether new (a class made by this reload) may be merged into old (the same class
    from before it): same qualified name, bases, metaclass and layout, and not an enum
    (its members are instances made at class creation)."""
    if not (_is_heap_class(old) and _is_heap_class(new)):
        return False, "C extension type"
    if isinstance(old, enum.EnumMeta) or isinstance(new, enum.EnumMeta):
        return False, "enum"
    if type(old) is not type(new):
        return False, "metaclass changed"
    if old.__qualname__ != new.__qualname__:
        return False, "renamed"
    if old.__bases__ != new.__bases__:
        return False, "bases changed"
    if not _safe_equal(old.__dict__.get("__slots__"), new.__dict__.get("__slots__")):
        return False, "__slots__ changed"
    if not _safe_equal(getattr(old, "_fields", None), getattr(new, "_fields", None)):
        return False, "fields changed"
    return True, None


# ---------------------------------------------------------------------------------------
# class statements during a reload: one that redefines an existing class (same qualified
# name, bases and plain metaclass) runs its body, then updates and binds the existing
# class object instead of creating a second one. So while the module's top level runs,
# `issubclass(x, Base)` against a reloaded Base, registries, and isinstance hold.

_original_build_class = builtins.__build_class__
_active = None  # the module being reloaded: _ModuleRun, python thread only


class _ModuleRun:
    def __init__(self, module, snapshot, undo, report):
        self.module = module
        self.namespace = module.__dict__
        self.snapshot = snapshot
        self.undo = undo
        self.report = report
        self.thread = threading.get_ident()
        self.updated = set()  # ids of classes updated in place
        self.seen = set()
        self.definitions = None  # _Definitions, or None for a whole-module run
        self.changed = set()     # names of the module this batch rebound or removed
        self.imported_changes = {}  # module run earlier in the batch -> its changed names
        self.class_filters = {}  # qualname -> (keys to set, keys to remove): partial updates

    def old_class(self, qualname):
        if "<locals>" in qualname:
            return None
        parts = qualname.split(".")
        obj = self.snapshot.get(parts[0], _MISSING)
        for part in parts[1:]:
            obj = obj.__dict__.get(part, _MISSING) if isinstance(obj, type) else _MISSING
        return obj if isinstance(obj, type) else None


def _build_class(func, name, *bases, **kwds):
    run = _active
    if (run is None or threading.get_ident() != run.thread
            or getattr(func, "__globals__", None) is not run.namespace):
        return _original_build_class(func, name, *bases, **kwds)
    old = run.old_class(func.__qualname__)
    if old is None or not _is_heap_class(old) or isinstance(old, enum.EnumMeta):
        return _original_build_class(func, name, *bases, **kwds)
    if not kwds and all(type(base) is type for base in bases):
        # The common class statement (no metaclass, plain bases): what types.prepare_class
        # would compute, without its Python-level work.
        resolved, meta, namespace, class_kwds = bases, type, {}, {}
    else:
        resolved = types.resolve_bases(bases)
        meta, namespace, class_kwds = types.prepare_class(name, resolved, kwds)
    members = run.class_filters.get(func.__qualname__)
    if ((members is None and meta not in (type, abc.ABCMeta)) or type(old) is not meta
            or old.__bases__ != (resolved or (object,)) or old.__module__ != run.module.__name__):
        return _original_build_class(func, name, *bases, **kwds)
    # A definition-level update (members not None) takes any metaclass: its body runs, the
    # members it changed are set on the class, and the metaclass (a model registry) is not
    # run again.
    exec(func.__code__, func.__globals__, namespace, closure=func.__closure__)
    if not _safe_equal(old.__dict__.get("__slots__"), namespace.get("__slots__")):
        if resolved is not bases:
            namespace["__orig_bases__"] = bases
        return meta(name, resolved, namespace, **class_kwds)
    # What type.__new__ does to a class body's namespace (Objects/typeobject.c, type_new_impl):
    # __new__ becomes a staticmethod, __init_subclass__ and __class_getitem__ classmethods.
    for key, wrap in (("__new__", staticmethod), ("__init_subclass__", classmethod),
                      ("__class_getitem__", classmethod)):
        if isinstance(namespace.get(key), types.FunctionType):
            namespace[key] = wrap(namespace[key])
    class_cell = namespace.get("__classcell__")
    only, remove = members if members is not None else (None, None)
    with _pyhot.Critical():
        _update_class(old, namespace, None, run.undo, run.report, run.seen, only, remove)
        if class_cell is not None:
            run.undo.cell(class_cell)
            class_cell.cell_contents = old
        stored_members = old.__dict__
        for key in namespace if only is None else only:
            stored = stored_members.get(key, _MISSING)
            if hasattr(type(stored), "__set_name__") and key != "__classcell__":
                type(stored).__set_name__(stored, old, key)
    run.updated.add(id(old))
    if members is not None:
        return old
    # As type.__new__ does for a new class: registries built by __init_subclass__ (which a
    # reload of the base's module may have emptied) see the class, the same object, again.
    super(old, old).__init_subclass__(**class_kwds)
    return old


def _patch_module(run):
    """After a module's new top level ran: each name that named a function or class
    before names the same object now, patched with the new code; what cannot be patched
    keeps the new object and is reported as replaced."""
    namespace, module_name = run.namespace, run.module.__name__
    for name, new in list(namespace.items()):
        old = run.snapshot.get(name, _MISSING)
        if old is _MISSING:
            continue
        if old is new:
            if isinstance(old, type) and id(old) in run.updated:
                run.report.add_patched(module_name + "." + old.__qualname__)
            continue
        qual = module_name + "." + name
        if isinstance(old, types.FunctionType) and isinstance(new, types.FunctionType):
            if old.__module__ != module_name:
                continue  # imported from elsewhere: its own module patches it
            if _patch_function(old, new, run.undo, run.seen):
                namespace[name] = old
                run.report.add_patched(qual)
            else:
                run.report.add_replaced(qual, "free variables changed")
        elif isinstance(old, type) and isinstance(new, type):
            if old.__module__ != module_name:
                continue
            ok, reason = _class_updatable(old, new)
            if ok:
                _update_class(old, dict(new.__dict__), new, run.undo, run.report, run.seen)
                namespace[name] = old
            else:
                run.report.add_replaced(qual, reason)
        elif (callable(old) and callable(new) and not isinstance(old, type)
              and isinstance(getattr(old, "__wrapped__", None), types.FunctionType)
              and isinstance(getattr(new, "__wrapped__", None), types.FunctionType)
              and getattr(old.__wrapped__, "__module__", None) == module_name):
            # A wrapper object (functools.lru_cache, a decorator class): keep the wrapper,
            # patch the function it calls.
            if _patch_function(old.__wrapped__, new.__wrapped__, run.undo, run.seen):
                namespace[name] = old
                run.report.add_patched(qual)
            else:
                run.report.add_replaced(qual, "free variables changed")



# ---------------------------------------------------------------------------------------
# Definition-level update (docs/reload.md, "What runs again"). A module's state records the
# source it last ran, split into top-level statements (and a class's into its body's
# statements), each with the names it binds and reads and the code objects its functions
# run. A new source is compared with it statement by statement, matched by place: the
# lines before and after the edit are unchanged, so only the statements the edit touches
# are parsed again, and within them a difflib alignment of their texts, then a pairing of
# the left-over definitions by kind and name, in order, says which statement became
# which. Then, in source order: a function whose body changed gets the new code in place
# (decorators not run again); a class whose body changed is updated in place; a new or
# changed statement runs; an unchanged one runs again only when it reads a name this batch
# changed; names that only removed statements bound are deleted.

_FUTURE_FLAGS = {name: getattr(__future__, name).compiler_flag for name in __future__.all_feature_names}
_FUTURE_MASK = 0
for _flag in _FUTURE_FLAGS.values():
    _FUTURE_MASK |= _flag
del _flag

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


class _Stmt:
    """One statement of a module or class body: lines start..end (1-based, inclusive,
    decorators included), its AST node, kind ("def", "class", "other"), the name a def or
    class binds, and, filled when first needed: the names it binds, the names it reads
    while it runs, and (defs) the code objects its functions run now, (classes) its body."""

    __slots__ = ("start", "end", "node", "kind", "name", "text", "_binds", "_reads", "code", "body",
                 "shift")

    def __init__(self, node, lines):
        self.node = node
        decorators = getattr(node, "decorator_list", None)
        self.start = decorators[0].lineno if decorators else node.lineno
        self.end = node.end_lineno
        self.text = "\n".join(lines[self.start - 1:self.end])
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            self.kind, self.name = "def", node.name
        elif isinstance(node, ast.ClassDef):
            self.kind, self.name = "class", node.name
        else:
            self.kind, self.name = "other", None
        self._binds = self._reads = None
        self.code = None   # def: the code object its function runs
        self.body = None   # class: [_Stmt] of its body
        self.shift = 0     # lines the statement moved since node was parsed

    def current_node(self):
        """node, its line numbers brought up to where the statement is now."""
        if self.shift:
            node = copy.deepcopy(self.node)  # a clone's node is shared with the recorded state
            ast.increment_lineno(node, self.shift)
            self.node, self.shift = node, 0
        return self.node

    @property
    def binds(self):
        if self._binds is None:
            self._binds = frozenset(_bound_names(self.node))
        return self._binds

    @property
    def reads(self):
        if self._reads is None:
            self._reads = frozenset(_read_names(self.node))
        return self._reads

    def head(self):
        """The source of what a def or class statement evaluates around its body: its
        decorators, and a class's header (bases, keywords, metaclass)."""
        node = self.node
        if self.kind == "class":
            lines = node.body[0].lineno - self.start if node.body[0].lineno > node.lineno else 0
        else:
            lines = node.lineno - self.start
        text = self.text
        cut = -1
        for _ in range(lines):
            cut = text.find("\n", cut + 1)
            if cut < 0:
                return text
        return text[:cut + 1] if lines else ""


_AST = ast.AST
_CONTEXT = ast.expr_context


def _children(node):
    """ast.iter_child_nodes(node) as a list, less the Load/Store/Del markers (which have
    no children and bind or read nothing): without iter_fields' generators, a third
    cheaper, and these walks run on the save -> run path."""
    out = []
    for field in node._fields:
        value = getattr(node, field, None)
        if isinstance(value, _AST):
            if not isinstance(value, _CONTEXT):
                out.append(value)
        elif isinstance(value, list):
            out.extend([item for item in value if isinstance(item, _AST)])
    return out


def _bound_names(node):
    """The names a statement binds in the scope it runs in (nested function, lambda and
    class bodies and comprehensions excluded, as their names are their own)."""
    names = set()
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, ast.Name):
            if isinstance(current.ctx, (ast.Store, ast.Del)):
                names.add(current.id)
            continue  # its only child is its context
        if isinstance(current, (ast.Import, ast.ImportFrom)):
            for alias in current.names:
                if alias.name != "*":
                    names.add(alias.asname or alias.name.partition(".")[0])
        elif isinstance(current, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(current.name)
            continue
        elif isinstance(current, ast.ExceptHandler) and current.name:
            names.add(current.name)
        elif isinstance(current, (ast.MatchAs, ast.MatchStar)) and current.name:
            names.add(current.name)
        elif isinstance(current, ast.MatchMapping) and current.rest:
            names.add(current.rest)
        if isinstance(current, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            # A walrus in a comprehension binds in the enclosing scope.
            names.update(n.target.id for n in ast.walk(current)
                         if isinstance(n, ast.NamedExpr) and isinstance(n.target, ast.Name))
            continue
        stack.extend(_children(current))
    return names


def _read_names(node):
    """The names (and `alias.attr` pairs) a statement reads while it runs: everything but
    the bodies of the functions and lambdas it defines, which run later."""
    names = set()
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        args = node.args
        roots = list(node.decorator_list) + list(args.defaults) + [d for d in args.kw_defaults if d]
        roots += [a.annotation for a in args.posonlyargs + args.args + args.kwonlyargs if a.annotation]
        roots += [a.annotation for a in (args.vararg, args.kwarg) if a is not None and a.annotation]
        if node.returns is not None:
            roots.append(node.returns)
    elif isinstance(node, ast.ClassDef):
        roots = list(node.decorator_list) + list(node.bases) + [k.value for k in node.keywords]
        for inner in node.body:
            names |= _read_names(inner)
    else:
        roots = [node]
    stack = roots
    while stack:
        current = stack.pop()
        if isinstance(current, ast.Name):
            if isinstance(current.ctx, ast.Load):
                names.add(current.id)
            continue  # its only child is its context
        if (isinstance(current, ast.Attribute) and isinstance(current.value, ast.Name)
                and isinstance(current.ctx, ast.Load)):
            names.add(current.value.id)
            names.add(current.value.id + "." + current.attr)
            continue
        if isinstance(current, _SCOPES):
            if isinstance(current, ast.Lambda):
                stack.extend(current.args.defaults)
                stack.extend(d for d in current.args.kw_defaults if d)
            else:
                names |= _read_names(current)
            continue
        if isinstance(current, ast.ClassDef):
            names |= _read_names(current)
            continue
        stack.extend(_children(current))
    return names


def _statements(body, lines):
    return [_Stmt(node, lines) for node in body]


def _code_consts(code):
    """{(name, first line): code} of the code objects directly inside code."""
    return {(c.co_name, c.co_firstlineno): c for c in code.co_consts if isinstance(c, types.CodeType)}


def _attach_codes(stmts, code):
    """Gives each def statement the code object its function was made from (found in code,
    the compiled module or class body, by name and first line), and each class statement
    its body's statements with theirs."""
    consts = _code_consts(code) if code is not None else {}
    for stmt in stmts:
        if stmt.kind == "def":
            stmt.code = consts.get((stmt.name, stmt.start))
        elif stmt.kind == "class" and stmt.body is not None:
            _attach_codes(stmt.body, consts.get((stmt.name, stmt.start)))


class _ModuleState:
    """What a module last ran: its source lines (text, newlines translated), its
    statements, its compile flags and file name."""

    __slots__ = ("module", "lines", "stmts", "flags", "filename")

    def __init__(self, module, text, tree, code, filename):
        self.module = module
        self.lines = text.split("\n")
        self.stmts = _statements(tree.body, self.lines)
        for stmt in self.stmts:
            if stmt.kind == "class":
                stmt.body = _class_body(stmt, self.lines)
        self.flags = (code.co_flags & _FUTURE_MASK) if code is not None else _future_flags(tree)
        self.filename = filename
        _attach_codes(self.stmts, code)


def _class_body(stmt, lines):
    body = _statements(stmt.node.body, lines)
    for inner in body:
        if inner.kind == "class":
            inner.body = _class_body(inner, lines)
    return body


def _future_flags(tree):
    flags = 0
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            for alias in node.names:
                flags |= _FUTURE_FLAGS.get(alias.name, 0)
    return flags


_states = {}  # module name -> _ModuleState of what it last ran


def _decode(data):
    """importlib.util.decode_source(data): the text of source bytes, newlines translated.
    Most sources are UTF-8 with no BOM and no coding cookie: those are decoded here
    directly, without tokenize.detect_encoding's machinery (tens of microseconds on a
    save, cold); anything else, and any byte that is not UTF-8, goes to decode_source, so
    it decides and raises as it does (PEP 263)."""
    if data[:3] != b"\xef\xbb\xbf":
        end = data.find(b"\n", data.find(b"\n") + 1)  # the two lines PEP 263 looks at
        if b"coding" not in (data if end < 0 else data[:end]):
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                pass
            else:
                if "\r" in text:
                    # As decode_source's IncrementalNewlineDecoder (not final: a last
                    # "\r" stays pending, so it is left out).
                    text = text.replace("\r\n", "\n")
                    if text.endswith("\r"):
                        text = text[:-1]
                    text = text.replace("\r", "\n")
                return text
    return importlib.util.decode_source(data)


def _state_of(module, path):
    """The module's recorded state, built from its first import the first time it is
    needed; None when what the module ran is not known (then it reloads whole)."""
    name = module.__name__
    state = _states.get(name)
    if state is not None and state.module is module:
        return state
    first = _first_runs.get(name)
    if first is None or first[0] != path:
        return None
    _real, data, code = first
    text = _decode(data)
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    state = _ModuleState(module, text, tree, code, _pyhot.module_origin(module) or path)
    _states[name] = state
    del _first_runs[name]
    return state


def _common_prefix(a, b):
    """Length of the longest common prefix of strings a and b: a binary search over slice
    comparisons, which run in C (memcmp), so a long unchanged text costs microseconds."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _changed_region(old_text, new_text):
    """(first, old_last, new_last): the 1-based line span the edit covers, in the old and
    new numbering (lines split at "\\n"); lines before first and after the last are
    unchanged. old_last (new_last) is first - 1 when the edit only adds (only removes)."""
    head = _common_prefix(old_text, new_text)
    first = old_text.count("\n", 0, head) + 1
    old_lines, new_lines = old_text.count("\n") + 1, new_text.count("\n") + 1
    tail = min(_common_prefix(old_text[::-1], new_text[::-1]), min(len(old_text), len(new_text)) - head)
    start = len(old_text) - tail  # where the common tail begins in old_text
    new_start = len(new_text) - tail
    if start == 0 and new_start == 0:
        shared = old_lines
    else:
        # The first line wholly inside the tail starts at a line start in both texts.
        at_line_start = ((start == 0 or old_text[start - 1] == "\n")
                         and (new_start == 0 or new_text[new_start - 1] == "\n"))
        newline = start - 1 if at_line_start else old_text.find("\n", start)
        shared = old_text.count("\n", newline + 1) + 1 if newline >= 0 or at_line_start else 0
    shared = min(shared, min(old_lines, new_lines) - (first - 1))
    return first, old_lines - shared, new_lines - shared


def _parse_new(state, text):
    """Parses the new source: only the statements the edit touches when the rest is
    unchanged. Returns (new lines, [_Stmt] of the new top level, (lo, hi) the index range
    of the old statements those new ones replace); SyntaxError as compile() raises it."""
    old_text = "\n".join(state.lines)
    if text == old_text:
        return state.lines, None, None
    lines = text.split("\n")
    old = state.stmts
    first, old_last, new_last = _changed_region(old_text, text)
    delta = len(lines) - len(state.lines)
    # Old statements the edit may touch: those overlapping it, plus one on each side (an
    # added indented line extends the statement before it; an added decorator, the one
    # after it).
    lo = 0
    while lo < len(old) and old[lo].end < first:
        lo += 1
    lo = max(lo - 1, 0)
    hi = lo
    while hi < len(old) and old[hi].start <= max(old_last, first):
        hi += 1
    hi = min(hi + 1, len(old))
    if not old or lo >= hi:
        start, stop_old = 1, len(state.lines)
        lo, hi = 0, len(old)
    else:
        start = min(old[lo].start, first)
        stop_old = max(old[hi - 1].end, old_last)
        if lo == 0:
            start = 1
        if hi == len(old):
            stop_old = len(state.lines)
    stop_new = stop_old + delta
    # Padded with empty lines, so the fragment's nodes carry the file's line numbers.
    fragment = "\n" * (start - 1) + "\n".join(lines[start - 1:stop_new])
    try:
        tree = ast.parse(fragment)
    except (SyntaxError, ValueError):
        # The edit reaches beyond the statements it seemed to touch (an unclosed string,
        # say): the whole source decides, and reports the error in its own line numbers.
        tree = ast.parse(text, state.filename)
        lo, hi = 0, len(old)
    new = _statements(tree.body, lines)
    return lines, new, (lo, hi)


def _equal_blocks(a, b):
    """difflib.SequenceMatcher(None, a, b, autojunk=False)'s matching blocks (i, j, size),
    less the final dummy. The common edit, one statement's text changed into a text that
    occurs nowhere else and from one that occurs nowhere else, is answered without the
    matcher: no common block can then hold either text, so the longest blocks are the
    unchanged head and tail, aligned, as difflib's rule (longest, then earliest in a, then
    in b) picks them (Lib/difflib.py, find_longest_match)."""
    if len(a) == len(b):
        changed = [k for k in range(len(a)) if a[k] != b[k]]
        if not changed:
            return [(0, 0, len(a))] if a else []
        if len(changed) == 1:
            k = changed[0]
            rest = a[:k] + a[k + 1:]
            if a[k] not in rest and b[k] not in rest:
                return [block for block in ((0, 0, k), (k + 1, k + 1, len(a) - k - 1)) if block[2]]
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return [tuple(block) for block in matcher.get_matching_blocks()[:-1]]


def _match(old, new):
    """Pairs statements of two versions of a body: [(old or None, new or None, same)] in
    new source order, removed old statements (new None) at the end. Equal texts align
    first (difflib), then left-over defs and classes pair by kind and name, in order."""
    pairs = [None] * len(new)
    used = set()
    for i1, j1, size in _equal_blocks([s.text for s in old], [s.text for s in new]):
        for k in range(size):
            pairs[j1 + k] = (old[i1 + k], new[j1 + k], True)
            used.add(i1 + k)
    for j, stmt in enumerate(new):
        if pairs[j] is not None:
            continue
        partner = None
        if stmt.kind != "other":
            for i, candidate in enumerate(old):
                if i not in used and candidate.kind == stmt.kind and candidate.name == stmt.name:
                    partner = i
                    break
        if partner is None:
            pairs[j] = (None, stmt, False)
        else:
            used.add(partner)
            pairs[j] = (old[partner], stmt, False)
    removed = [(stmt, None, False) for i, stmt in enumerate(old) if i not in used]
    return pairs + removed


def _same_value(a, b, depth=0):
    """Whether a and b are the same value for the purpose of "this name changed": identity,
    or equality of plain values (tuples and lists compared item by item). Never raises:
    anything whose == is unusual (numpy arrays) counts as changed unless it is the same
    object."""
    if a is b:
        return True
    kind = type(a)
    if kind is not type(b) or depth > 20:
        return False
    if kind in (int, float, complex, str, bytes, bool, type(None)):
        return a == b
    if kind in (tuple, list, frozenset):
        if len(a) != len(b):
            return False
        if kind is frozenset:
            try:
                return bool(a == b)
            except Exception:
                return False
        return all(_same_value(x, y, depth + 1) for x, y in zip(a, b))
    return False


def _carry_codes(old, new):
    """new has old's text (moved): it takes the code objects old's functions run."""
    new.code = old.code
    if old.body is not None and new.body is not None and len(old.body) == len(new.body):
        for inner_old, inner_new in zip(old.body, new.body):
            _carry_codes(inner_old, inner_new)


def _unwrap_candidates(obj, depth=0):
    """Functions reachable from obj without a search: obj itself, what a decorator wraps
    (__wrapped__, __func__, a property's accessors, a partial's func, closure cells)."""
    if depth > 4 or obj is None:
        return
    if isinstance(obj, types.FunctionType):
        yield obj
        for cell in obj.__closure__ or ():
            try:
                inner = cell.cell_contents
            except ValueError:
                continue
            if isinstance(inner, types.FunctionType) or hasattr(inner, "__wrapped__"):
                yield from _unwrap_candidates(inner, depth + 1)
    elif isinstance(obj, property):
        for accessor in (obj.fget, obj.fset, obj.fdel):
            yield from _unwrap_candidates(accessor, depth + 1)
        return
    try:
        inner = obj.__dict__.get("__wrapped__") if hasattr(obj, "__dict__") else None
    except Exception:
        inner = None
    if inner is None:
        inner = getattr(obj, "__func__", None) if isinstance(obj, (staticmethod, classmethod, types.MethodType)) else None
    if inner is None and not isinstance(obj, types.FunctionType):
        for attr in ("__wrapped__", "func"):
            try:
                inner = getattr(obj, attr, None)
            except Exception:
                inner = None
            if inner is not None:
                break
    if inner is not None and inner is not obj:
        yield from _unwrap_candidates(inner, depth + 1)


def _functions_running(code, places):
    """The functions whose __code__ is code: looked for first in places (the objects the
    name binds), then, when none is there (a decorator that stores the function and
    returns something else), among everything that refers to code (gc)."""
    found = []
    for place in places:
        for fn in _unwrap_candidates(place):
            if fn.__code__ is code and fn not in found:
                found.append(fn)
    if not found:
        found = [r for r in gc.get_referrers(code)
                 if isinstance(r, types.FunctionType) and r.__code__ is code]
    return found


class _Definitions:
    """A module's definition-level update, made in the batch's pre-check: what the new
    source is, which statement became which; applied by apply() when the module's turn
    comes (Engine.run_module). The new state is kept for the commit."""

    def __init__(self, state, text):
        self.state = state
        self.text = text
        self.lines, new, region = _parse_new(state, text)
        self.identical = new is None
        self.new_state = None
        self.codes = {}
        self.moved = []  # (statement, lines it moved) of equal texts in a new place
        if self.identical:
            self.prefix, self.pairs, self.suffix, self.delta = state.stmts, [], [], 0
            return
        lo, hi = region
        self.prefix = state.stmts[:lo]
        self.suffix = state.stmts[hi:]
        self.delta = len(self.lines) - len(state.lines)
        self.pairs = _match(state.stmts[lo:hi], new)
        for old, stmt, same in self.pairs:
            if same:
                # Equal text, so equal names bound and read: the old statement's, known
                # already, save walking the new one's tree (apply reads them all).
                stmt._binds, stmt._reads = old._binds, old._reads
            if stmt is not None and stmt.kind == "class":
                stmt.body = _class_body(stmt, self.lines)
        # Every changed or new statement compiles before anything runs.
        self.codes = {}
        for old, stmt, same in self.pairs:
            if stmt is not None and not same:
                self.codes[id(stmt)] = self.compile(stmt.node)

    def record_imports(self, name):
        """Adds what the new and changed statements import to the module's entry of the
        import graph. (An import a statement no longer makes stays until the module next
        runs whole: an extra edge only adds a dependent, which runs nothing it need not.)"""
        module = self.state.module
        is_package = hasattr(module, "__path__")
        names = set(_imports.get(name, ()))
        for _old, stmt, same in self.pairs:
            if stmt is None or same:
                continue
            _tree_imports(names, name, is_package, stmt.node)
        _set_imports(name, names)

    def compile(self, node):
        module = ast.Module([node], [])
        return compile(module, self.state.filename, "exec", flags=self.state.flags, dont_inherit=True)

    def stmts_in_order(self):
        """(old, new, same) for every statement of the new source, in order."""
        for stmt in self.prefix:
            yield stmt, stmt, True
        for pair in self.pairs:
            if pair[1] is not None:
                yield pair
        for stmt in self.suffix:
            yield stmt, stmt, True

    def apply(self, run):
        """Runs the update in the module's namespace (inside the batch: every change is
        recorded in run.undo)."""
        namespace, module_name = run.namespace, run.module.__name__
        changed = run.changed  # names of this module that the batch rebound or removed
        imported_changes = run.imported_changes  # module -> its names the batch changed
        if self.identical and not imported_changes:
            self.new_state = (self.state.lines, self.state.stmts)
            return
        # Names only removed statements bound leave the module first, so a statement that
        # still reads one runs again and fails (NameError) as a fresh import would.
        removed_stmts = [old for old, stmt, same in self.pairs if stmt is None]
        if removed_stmts:
            new_binds = set()
            for old, stmt, same in self.stmts_in_order():
                new_binds |= stmt.binds
            for old in removed_stmts:
                for name in sorted(old.binds - new_binds):
                    value = namespace.pop(name, _MISSING)
                    if value is _MISSING:
                        continue
                    changed.add(name)
                    run.report.removed.append(module_name + "." + name)
                    conform = value.__dict__.get("__conform__") if isinstance(value, types.FunctionType) else None
                    if callable(conform):
                        conform(None)
        aliases = None
        new_stmts = []
        for old, stmt, same in self.stmts_in_order():
            if same:
                if stmt is not old:
                    _carry_codes(old, stmt)  # equal text in a new place: its functions stay
                    if stmt.start != old.start:
                        self.moved.append((stmt, stmt.start - old.start, None))
                if changed or imported_changes:
                    if aliases is None:
                        aliases = self.aliases(run)
                    if self.reads_changes(stmt, changed, imported_changes, aliases):
                        if stmt is old:
                            stmt = _clone(old)  # the recorded state changes at the commit only
                        self.run_statement(run, stmt, self.compile(stmt.current_node()), stmt.binds)
                new_stmts.append(stmt)
                continue
            code = self.codes[id(stmt)]
            if old is not None and stmt.kind == "def" and old.head() == stmt.head() and old.code is not None:
                if self.patch_function(run, old, stmt, code, namespace, module_name):
                    new_stmts.append(stmt)
                    continue
            if old is not None and stmt.kind == "class" and old.head() == stmt.head():
                cls = namespace.get(stmt.name)
                if (isinstance(cls, type) and not isinstance(cls, enum.EnumMeta)
                        and cls.__module__ == module_name and old.body is not None
                        and self.update_class_members(run, cls, old, stmt)):
                    new_stmts.append(stmt)
                    continue
            self.run_statement(run, stmt, code, stmt.binds)
            new_stmts.append(stmt)
        self.new_state = (self.lines, new_stmts)

    def aliases(self, run):
        """local name -> watched module it names (from `import x`, `import x as y`,
        `from pkg import module`), for `alias.attr` reads."""
        result = {}
        for name, value in run.namespace.items():
            if isinstance(value, types.ModuleType) and value.__name__ in run.imported_changes:
                result[name] = value.__name__
        return result

    def reads_changes(self, stmt, changed, imported_changes, aliases):
        reads = stmt.reads
        if changed and not changed.isdisjoint(reads):
            return True
        node = stmt.node
        if isinstance(node, ast.ImportFrom) and imported_changes:
            source = _resolve_from(self.state.module, node)
            names = imported_changes.get(source)
            if names:
                return any(alias.name == "*" or alias.name in names for alias in node.names)
            return False
        for alias, module_name in aliases.items():
            names = imported_changes.get(module_name)
            if names and alias in reads and any(alias + "." + n in reads for n in names):
                return True
        return False

    def run_statement(self, run, stmt, code, old_value_names):
        """Runs one statement in the module's namespace; names it rebound to another value
        join run.changed. Functions and classes it rebinds keep their identity as in a
        whole-module reload (patched in place)."""
        namespace = run.namespace
        before = {name: namespace.get(name, _MISSING) for name in old_value_names}
        exec(code, namespace)
        consts = _code_consts(code)
        if stmt.kind == "def":
            stmt.code = consts.get((stmt.name, stmt.start))
        elif stmt.kind == "class":
            _attach_codes(stmt.body, consts.get((stmt.name, stmt.start)))
        module_name = run.module.__name__
        for name in old_value_names:
            old, value = before[name], namespace.get(name, _MISSING)
            if old is _MISSING and value is not _MISSING:
                run.report.added.append(module_name + "." + name)
                run.changed.add(name)
                continue
            if old is _MISSING or value is _MISSING:
                run.changed.add(name)
                continue
            if _keep_identity(run, name, old, value):
                continue
            if not _same_value(old, value):
                run.changed.add(name)

    def patch_function(self, run, old, stmt, code, namespace, module_name):
        """A def whose body changed: its function(s) get the new code in place, decorators
        not run again. False when it has to run as a statement instead (its function is
        nowhere to be found, or its free variables changed)."""
        functions = _functions_running(old.code, [namespace.get(stmt.name)])
        if not functions:
            return False
        new_fn = self.make_function(run, stmt, code)
        stmt.code = new_fn.__code__
        for fn in functions:
            conform = fn.__dict__.get("__conform__")
            if callable(conform):
                conform(new_fn)
                continue
            if not _patch_function(fn, new_fn, run.undo, run.seen):
                stmt.code = old.code
                return False
        run.report.add_patched(module_name + "." + new_fn.__qualname__)
        return True

    def make_function(self, run, stmt, code):
        """The function a def statement makes, without its decorators: evaluated (defaults,
        annotations) in the module's namespace, bound nowhere."""
        node = stmt.node
        bare = copy.copy(node)
        bare.decorator_list = []
        scratch = {}
        exec(self.compile(bare), run.namespace, scratch)
        return scratch[node.name]

    def update_class_members(self, run, cls, old, stmt):
        """A class whose body changed and whose head did not, updated in place, its
        metaclass not run again. When only its methods changed (bodies, decorators, new or
        removed ones), member by member: changed bodies patched, new or re-decorated
        methods set (their decorators run), removed members deleted; the class statement
        and its decorators do not run. When other statements of its body changed or were
        added, the class statement runs (decorators included) and only the members those
        statements bind are set on the existing class, through setattr. Returns True."""
        pairs = _match(old.body, stmt.body)
        rerun = False
        methods, members = [], []
        for inner_old, inner, same in pairs:
            if inner is None or same:
                continue
            if inner.kind != "def":
                rerun = True
            elif inner_old is not None and inner_old.head() == inner.head() and inner_old.code is not None:
                methods.append((inner_old, inner))
            else:
                members.append(inner)
        for inner_old, inner, same in pairs:
            if same and inner is not None and inner is not inner_old:
                _carry_codes(inner_old, inner)
                if inner.start != inner_old.start:
                    self.moved.append((inner, inner.start - inner_old.start, cls))
        qual = run.module.__name__ + "." + cls.__qualname__
        new_keys = set()
        for inner_old, inner, same in pairs:
            if inner is not None:
                new_keys |= inner.binds
        removed_keys = set()
        for inner_old, inner, same in pairs:
            if inner is None:
                removed_keys |= inner_old.binds - new_keys
        if rerun:
            return self.run_class_statement(run, cls, old, stmt, pairs, new_keys, removed_keys, qual)
        for inner_old, inner in methods:
            member = cls.__dict__.get(inner.name, _MISSING)
            functions = _functions_running(inner_old.code, [member] if member is not _MISSING else [])
            if not functions:
                members.append(inner)  # not to be found: set anew
                continue
            new_fn = self.make_method(run, cls, inner)
            patched = True
            for fn in functions:
                conform = fn.__dict__.get("__conform__")
                if callable(conform):
                    conform(new_fn)
                elif not _patch_function(fn, new_fn, run.undo, run.seen):
                    patched = False  # its free variables changed: set anew
            if patched:
                inner.code = new_fn.__code__
                run.report.add_patched(qual + "." + inner.name)
            else:
                members.append(inner)
        if members:
            self.set_members(run, cls, members, qual)
        if removed_keys:
            run.undo.klass(cls)
            for key in removed_keys:
                if key in cls.__dict__:
                    try:
                        delattr(cls, key)
                    except (AttributeError, TypeError):
                        pass
        if (members or removed_keys) and isinstance(cls, abc.ABCMeta):
            abc.update_abstractmethods(cls)
        run.report.add_patched(qual)
        return True

    def run_class_statement(self, run, cls, old, stmt, pairs, new_keys, removed_keys, qual):
        """Runs the class statement, its decorators included; the members its changed and
        new statements bind are set on cls, the removed ones deleted (_build_class)."""
        # What the body computes as a whole comes from the new body too.
        apply_keys = {"__annotations__", "__doc__"}
        for inner_old, inner, same in pairs:
            if inner is not None and not same:
                apply_keys |= inner.binds
        if stmt.node.decorator_list:
            # Its decorators run again on the class: what they made last time (a
            # dataclass's __init__, say), which no statement of the body binds, goes
            # first, so they make it anew (a decorator keeps what the class defines).
            old_binds = set()
            for inner_old in old.body:
                old_binds |= inner_old.binds
            removed_keys = removed_keys | {key for key in cls.__dict__
                                           if key not in old_binds and key not in new_keys
                                           and key not in _CLASS_KEEP}
        run.class_filters[cls.__qualname__] = (apply_keys, removed_keys)
        try:
            code = self.codes[id(stmt)]
            exec(code, run.namespace)
        finally:
            run.class_filters.pop(cls.__qualname__, None)
        new_cls = run.namespace.get(stmt.name)
        if new_cls is not cls:
            # The class statement made a new class after all (its layout changed).
            reason = _class_updatable(cls, new_cls)[1] if isinstance(new_cls, type) else None
            run.report.add_replaced(qual, reason or "class statement made a new class")
            run.changed.add(stmt.name)
            return True
        _attach_codes(stmt.body, _code_consts(code).get((stmt.name, stmt.start)))
        return True

    def holder(self, cls, nodes):
        """A module holding `class <cls's name>:` with nodes as its body, at their lines:
        compiled, its methods compile as in the class (super(), private names)."""
        holder = ast.ClassDef(name=cls.__name__, bases=[], keywords=[], body=nodes, decorator_list=[])
        ast.copy_location(holder, nodes[0])
        holder.end_lineno = nodes[-1].end_lineno
        holder.end_col_offset = 0
        code = self.compile(holder)
        return _code_consts(code).get((cls.__name__, holder.lineno))

    def set_members(self, run, cls, inners, qual):
        """Runs the def statements inners (decorators included) as in cls's body, with
        the class's current members in scope (so `@x.setter` finds x), and sets what they
        bind on cls."""
        body = self.holder(cls, [inner.node for inner in inners])
        scope = {key: value for key, value in cls.__dict__.items() if key not in _CLASS_SKIP}
        scope["__module__"], scope["__qualname__"] = cls.__module__, cls.__qualname__
        exec(body, run.namespace, scope)
        cell = scope.get("__classcell__")
        if cell is not None:
            run.undo.cell(cell)
            cell.cell_contents = cls
        current = run.undo.klass(cls)
        prefix = cls.__name__ + "."
        for inner in inners:
            value = scope[inner.name]
            for fn in _functions_of(value):
                if fn.__qualname__.startswith(prefix):
                    fn.__qualname__ = cls.__qualname__ + "." + fn.__qualname__[len(prefix):]
            setattr(cls, inner.name, value)
            if hasattr(type(value), "__set_name__"):
                type(value).__set_name__(value, cls, inner.name)
            if inner.name not in current:
                run.report.added.append(qual + "." + inner.name)
            else:
                run.report.add_patched(qual + "." + inner.name)
        _attach_codes(inners, body)

    def make_method(self, run, cls, inner):
        """The function a method statement makes, decorators left out, compiled inside a
        class of the same name (so super() and private names compile as in the class)."""
        bare = copy.copy(inner.node)
        bare.decorator_list = []
        scratch = {}
        exec(self.holder(cls, [bare]), run.namespace, scratch)
        fn = scratch[inner.name]
        fn.__qualname__ = cls.__qualname__ + "." + inner.name
        return fn

    def commit(self, module):
        """The module's state becomes what ran. Functions of statements the edit moved (those
        after it, when it added or removed lines) take their new line numbers, so tracebacks
        and inspect point at the right lines: those reached through the module's names and
        its classes' members; one a decorator stored elsewhere keeps its old numbers."""
        if self.new_state is None:
            return
        state = self.state
        state.lines, state.stmts = self.new_state
        state.module = module
        namespace = module.__dict__
        for stmt, delta, cls in self.moved:
            _relocate(stmt, delta, namespace if cls is None else cls.__dict__)
        if self.delta:
            for stmt in self.suffix:
                _shift(stmt, self.delta)
                _relocate(stmt, self.delta, namespace)


def _shifted_code(code, delta):
    """code (and the code objects nested in it) delta lines further down: in CPython 3.11
    a code object's line table is relative to co_firstlineno (Objects/codeobject.c)."""
    consts = code.co_consts
    if any(isinstance(const, types.CodeType) for const in consts):
        consts = tuple(_shifted_code(c, delta) if isinstance(c, types.CodeType) else c for c in consts)
        return code.replace(co_firstlineno=code.co_firstlineno + delta, co_consts=consts)
    return code.replace(co_firstlineno=code.co_firstlineno + delta)


def _relocate(stmt, delta, members):
    """Functions made by stmt (found in members, a namespace or a class's __dict__) run
    their code moved by delta lines. Never raises: it runs at the commit."""
    try:
        if stmt.kind == "def" and stmt.code is not None:
            found = [fn for fn in _unwrap_candidates(members.get(stmt.name)) if fn.__code__ is stmt.code]
            if found:
                moved = _shifted_code(stmt.code, delta)
                for fn in found:
                    fn.__code__ = moved
                stmt.code = moved
        elif stmt.kind == "class" and stmt.body:
            cls = members.get(stmt.name)
            if isinstance(cls, type):
                for inner in stmt.body:
                    _relocate(inner, delta, cls.__dict__)
    except Exception:
        pass


def _clone(stmt):
    copy_ = copy.copy(stmt)
    if stmt.body is not None:
        copy_.body = [_clone(inner) for inner in stmt.body]
    return copy_


def _shift(stmt, delta):
    stmt.start += delta
    stmt.end += delta
    stmt.shift += delta
    if stmt.body:
        for inner in stmt.body:
            _shift(inner, delta)


def _resolve_from(module, node):
    if not node.level:
        return node.module
    is_package = hasattr(module, "__path__")
    return _resolve_relative(module.__name__, is_package, node.level, node.module or "")


def _keep_identity(run, name, old, value):
    """After a statement rebound name from old to value: a function or class that was there
    before stays, patched with the new one (as a whole-module reload does). True when
    name is bound to old again (so it did not change)."""
    module_name = run.module.__name__
    qual = module_name + "." + name
    if isinstance(old, types.FunctionType) and isinstance(value, types.FunctionType):
        if old.__module__ != module_name:
            return False
        if _patch_function(old, value, run.undo, run.seen):
            run.namespace[name] = old
            run.report.add_patched(qual)
            return True
        run.report.add_replaced(qual, "free variables changed")
        return False
    if isinstance(old, type) and isinstance(value, type):
        if old is value:
            return True
        if old.__module__ != module_name:
            return False
        ok, reason = _class_updatable(old, value)
        if ok:
            _update_class(old, dict(value.__dict__), value, run.undo, run.report, run.seen)
            run.namespace[name] = old
            return True
        run.report.add_replaced(qual, reason)
    return False


# ---------------------------------------------------------------------------------------
# Batch hooks: the engine side of `pyhot.before_reload` / `pyhot.after_reload`. "before"
# hooks run once the plan is made and every source compiled, before any module code of
# the batch runs; "after" hooks once every module ran, before the commit. A hook that
# raises rolls the batch back as a module that raises does.

_hooks = {"before": [], "after": []}


def add_hook(when, fn):
    """Registers fn(batch_info) to run at `when` ("before" or "after") in every batch;
    returns fn, so it serves as a decorator. ValueError for another `when`, TypeError for
    a fn that is not callable."""
    if when not in _hooks:
        raise ValueError("when must be 'before' or 'after', not %r" % (when,))
    if not callable(fn):
        raise TypeError("a hook must be callable")
    _hooks[when].append(fn)
    return fn


def remove_hook(when, fn):
    """Unregisters fn from `when`; ValueError when it was not registered there."""
    if when not in _hooks:
        raise ValueError("when must be 'before' or 'after', not %r" % (when,))
    _hooks[when].remove(fn)


class BatchInfo:
    """What a hook is told about the batch. batch: its id (int); paths: the changed files
    (realpaths); modules: module names in run order; patched, replaced, added, removed:
    qualified names ("module.qualname"), empty in "before" hooks; mode: "definitions" or
    "module"."""

    def __init__(self, batch, paths, modules, mode):
        self.batch = batch
        self.paths = tuple(paths)
        self.modules = tuple(modules)
        self.mode = mode
        self.patched, self.replaced, self.added, self.removed = [], [], [], []
        self._rollbacks = []

    def on_rollback(self, fn):
        """Registers fn() to run if the batch rolls back after this point; such callables
        run in reverse order of registration, after the modules are restored. Returns fn."""
        if not callable(fn):
            raise TypeError("on_rollback needs a callable")
        self._rollbacks.append(fn)
        return fn

    def __repr__(self):
        return "<BatchInfo %d %s %s>" % (self.batch, self.mode, list(self.modules))


def _run_hooks(when, info):
    """Runs the `when` hooks in registration order; returns (hook, exception) of the first
    that raised, else None."""
    for fn in list(_hooks[when]):
        try:
            fn(info)
        except BaseException as exc:
            return fn, exc
    return None


def _hook_error(fn, exc):
    code = getattr(fn, "__code__", None) or getattr(getattr(fn, "__call__", None), "__code__", None)
    error = _pyhot.describe_exception(exc, prefer_file=code.co_filename if code else None)
    error["hook"] = getattr(fn, "__qualname__", repr(fn))
    return error


def _run_rollbacks(info):
    """Runs the on_rollback callables in reverse; their errors go to stderr, since the
    batch is already being undone."""
    while info._rollbacks:
        fn = info._rollbacks.pop()
        try:
            fn()
        except BaseException:
            import traceback
            sys.stderr.write("pyhot: an on_rollback callable raised:\n" + traceback.format_exc())

# ---------------------------------------------------------------------------------------
# The engine: one object holds its state (the index of watched modules with the applied
# digests, the pending files, the strategy and mode) and runs a batch in DESIGN's steps:
# collect (paths -> changed modules), plan, pre-check (every source compiled, every
# definition-level diff made), run (hooks, then each module's update: definition-level
# in place, or whole through importlib.reload),
# and then roll back or commit.

_MODES = ("definitions", "module")


def _elapsed_ms(start_ns):
    return (time.perf_counter_ns() - start_ns) / 1e6


class _Failure(Exception):
    """Ends an attempt: error is the protocol's error object, module the module (or hook)
    that failed, path its file, exception what was raised."""

    def __init__(self, error, module=None, path=None, exception=None, stage="run", ms=0.0):
        super().__init__(error.get("message"))
        self.plan = None  # the plan, when the pre-check got that far
        self.error, self.module, self.path = error, module, path
        self.exception, self.stage, self.ms = exception, stage, ms


class _Update:
    """One module of the plan: how it runs (definitions, or code for a whole-module run),
    and what it did."""

    __slots__ = ("name", "module", "path", "definitions", "code", "digest", "data", "changed_file",
                 "report", "ms", "run")

    def __init__(self, name, module, path, changed_file):
        self.name, self.module, self.path = name, module, path
        self.changed_file = changed_file
        self.definitions = self.code = self.digest = self.data = None
        self.report, self.ms, self.run = None, 0.0, None


class Engine:
    """The reload engine's state and steps. index: _pyhot.index (watched modules, their
    files, applied digests); pending: realpaths of files whose batch failed, retried with
    every later batch; strategy: "dependents" or "module"; mode: "definitions" or
    "module" (docs/reload.md)."""

    def __init__(self, index):
        self.index = index
        self.applied = index.applied
        self.pending = []
        self.strategy = "dependents"
        self.mode = "definitions"
        self.lock = threading.RLock()  # a batch at a time: the daemon's, or an app's reload
        self._own_batches = 0

    # -- entry points

    def reload_batch(self, paths, module_names, batch_id=None):
        """A batch of changed paths (and explicit module names): applies whole or not at all.
        Files pending from an earlier failure join it; if only they fail, the rest applies
        without them. Returns {"reloads": [...], "batch": {...}} (docs/protocol.md)."""
        with self.lock:
            started = time.perf_counter_ns()
            count = self.index.refresh()
            if batch_id is None:
                self._own_batches -= 1
                batch_id = self._own_batches
            fresh = []
            for raw in paths:
                path = self.index.realpath(raw)
                if path not in fresh:
                    fresh.append(path)
            named = {self.index.path_of(name) for name in module_names}
            held = [p for p in self.pending if p not in fresh and p not in named]
            outcome = self.attempt(fresh + held, module_names, batch_id, started)
            failure = outcome.get("failure")
            if failure is not None and failure.path in held and (fresh or module_names):
                # Only files that were already pending fail: the new edit goes without them.
                retry = self.attempt(fresh, module_names, batch_id, started)
                for entry in outcome["reloads"]:
                    if entry.get("path") in held and entry["result"] in ("error", "rolled_back"):
                        entry = dict(entry, result="error", patched=[], replaced=[],
                                     reason="pending since an earlier batch failed; still failing")
                        retry["reloads"].append(entry)
                for path in held:
                    if path not in self.pending:
                        self.pending.append(path)
                retry["batch"]["paths"] = [*fresh, *held]
                retry["batch"]["pending"] = [p for p in held if p in self.pending]
                outcome = retry
            self.index.note_reordered(count)
            return outcome

    def reload_modules(self, names):
        """importlib.reload of watched modules, started by the app or `exec`: a batch of
        its own. Returns the batch's outcome; its "exception" is what to raise."""
        return self.reload_batch([], list(names))

    # -- the steps of one attempt

    def attempt(self, paths, module_names, batch_id, started):
        reloads = []
        batch = {"paths": list(paths), "modules": [], "result": "skipped", "duration_ms": 0.0}
        changed, changed_modules = self.collect(paths, module_names, reloads)
        if not changed_modules:
            if any(r["result"] == "error" for r in reloads):
                batch["result"] = "error"
                batch["modules"] = [r["module"] for r in reloads
                                    if r["result"] == "error" and r["module"]]
            batch["duration_ms"] = _elapsed_ms(started)
            return {"reloads": reloads, "batch": batch}
        graph_before = {name: _imports.get(name) for name in changed_modules}
        plan = changed_modules
        try:
            plan, updates = self.precheck(changed, changed_modules)
        except _Failure as failure:
            _restore_imports(graph_before)
            self.keep_pending(changed)
            failure.stage = "precheck"
            return self.failed(failure, failure.plan or plan, [], reloads, batch, started)
        info = BatchInfo(batch_id, paths, plan, self.mode)
        _batch_undo[0] = _Undo()
        try:
            reloaded_ns = self.run(updates, info)
        except _Failure as failure:
            _restore_imports(graph_before)
            self.rollback(updates, info)
            self.keep_pending(changed)
            return self.failed(failure, plan, [u for u in updates if u.report is not None],
                               reloads, batch, started)
        self.commit(changed, updates, changed_modules)
        for update in updates:
            report = update.report
            entry = {"module": update.name, "path": update.path, "result": "ok",
                     "duration_ms": update.ms, "patched": report.patched, "replaced": report.replaced,
                     "added": report.added, "removed": report.removed,
                     "mode": "definitions" if update.definitions is not None else "module"}
            if report.reasons:
                entry["replaced_reasons"] = dict(report.reasons)
            if update.name not in changed_modules:
                entry["reason"] = "imports a changed module"
            reloads.append(entry)
        batch["modules"] = [u.name for u in updates]
        batch.update(result="ok", duration_ms=_elapsed_ms(started), reloaded_ns=reloaded_ns)
        return {"reloads": reloads, "batch": batch}

    def collect(self, paths, module_names, reloads):
        """Step 1: the changed files ({realpath: (bytes, digest)}) and the modules loaded
        from them, plus the modules named explicitly; skipped paths reported in reloads."""
        index = self.index
        changed, changed_modules = {}, []
        for path in paths:
            names = list(index.modules_at(path))
            try:
                data = _pyhot.read_source(path)
            except FileNotFoundError:
                for name in names or [None]:
                    reloads.append({"module": name, "path": path, "result": "skipped",
                                    "reason": "deleted; the module stays loaded" if name else "deleted",
                                    "duration_ms": 0.0})
                self.drop_pending(path)
                continue
            except OSError as exc:
                reloads.append({"module": names[0] if names else None, "path": path,
                                "result": "error", "duration_ms": 0.0,
                                "error": _pyhot.describe_exception(exc)})
                continue
            digest = _pyhot.digest(data)
            if not names:
                reloads.append({"module": None, "path": path, "result": "skipped",
                                "reason": "not imported", "duration_ms": 0.0})
                continue
            if self.applied.get(path) == digest:
                # A file whose batch failed, saved back to what was last applied: the
                # failed edit is gone and the module runs that file's code; say so.
                reverted = path in self.pending
                for name in names:
                    entry = {"module": name, "path": path, "result": "skipped",
                             "reason": "content unchanged", "duration_ms": 0.0}
                    if reverted:
                        entry.update(reason="back to the applied code (the failed edit was "
                                     "undone)", reverted=True)
                    reloads.append(entry)
                self.drop_pending(path)
                continue
            changed[path] = (data, digest)
            changed_modules.extend(n for n in names if n not in changed_modules)
        for name in module_names:
            path = index.path_of(name)
            if path is None:
                continue
            if path not in changed:
                try:
                    data = _pyhot.read_source(path)
                    changed[path] = (data, _pyhot.digest(data))
                except OSError:
                    pass
            if name not in changed_modules:
                changed_modules.append(name)
        return changed, changed_modules

    def module_mode(self, module, text):
        if self.mode == "module":
            return True
        if module.__dict__.get("__pyhot_reload__") == "module":
            return True
        return text is not None and _MODULE_MODE_RE.search(text) is not None

    def precheck(self, changed, changed_modules):
        """Steps 2 and 3: the plan, and every module's update prepared: sources compiled,
        definition-level diffs made. Raises _Failure before anything ran."""
        index = self.index
        updates = {}
        for path, (data, digest) in changed.items():
            for name in index.modules_at(path):
                module = sys.modules[name]
                update = _Update(name, module, path, True)
                update.data, update.digest = data, digest
                try:
                    self.prepare(update)
                except (SyntaxError, ValueError, UnicodeDecodeError) as exc:
                    raise _Failure(_pyhot.describe_exception(exc), name, path, exc, "precheck")
                updates[name] = update
                if len(changed) > 1:
                    # Another file of the batch may now be imported: the plan needs the new
                    # edges. (With one file, its own imports cannot change who depends on
                    # it; they are recorded at the commit, off the save -> run path.)
                    if update.code is not None:
                        _record_imports(name, path, code=update.code)
                    else:
                        update.definitions.record_imports(name)
        plan = _plan_order(changed_modules, _dependency_graph(), self.strategy == "dependents")
        ordered = []
        for name in plan:
            update = updates.get(name)
            if update is None:
                # A dependent whose file did not change: what it last ran, or (whole-module
                # mode, or no record of what ran) its current source, compiled here too.
                module = sys.modules[name]
                path = index.path_of(name)
                update = _Update(name, module, path, False)
                state = None if self.module_mode(module, None) else _state_of(module, path)
                try:
                    if state is not None:
                        update.definitions = _Definitions(state, "\n".join(state.lines))
                    else:
                        update.data = _pyhot.read_source(path)
                        update.digest = _pyhot.digest(update.data)
                        update.code = compile(update.data, _pyhot.module_origin(module) or path, "exec",
                                              dont_inherit=True)
                except (SyntaxError, ValueError, OSError) as exc:
                    failure = _Failure(_pyhot.describe_exception(exc), name, path, exc, "precheck")
                    failure.plan = plan
                    raise failure
            ordered.append(update)
        return plan, ordered

    def prepare(self, update):
        module = update.module
        state = text = None
        # A module that runs whole needs no text: compile() decodes the bytes as the
        # import system's source_to_code does (PEP 263), so that saves a decode per save.
        if not self.module_mode(module, None):
            text = _decode(update.data)
            if not self.module_mode(module, text):
                state = _state_of(module, update.path)
        if state is not None:
            update.definitions = _Definitions(state, text)
        else:
            update.code = compile(update.data, _pyhot.module_origin(module) or update.path, "exec",
                                  dont_inherit=True)

    def run(self, updates, info):
        """Step 4: "before" hooks, each module in plan order, "after" hooks. Raises _Failure
        (the updates that ran have their report set). Returns when the last module ran
        (time.monotonic_ns)."""
        self.hooks("before", info)
        overrides = {u.path: u.code for u in updates if u.code is not None}
        _code_overrides.update(overrides)
        batch_changes = {}
        try:
            for update in updates:
                begun = time.perf_counter_ns()
                update.report = _Report()
                try:
                    self.run_module(update, batch_changes)
                except BaseException as exc:
                    update.ms = _elapsed_ms(begun)
                    raise _Failure(_pyhot.describe_exception(exc, prefer_file=update.path),
                                   update.name, update.path, exc, "run", update.ms)
                update.ms = _elapsed_ms(begun)
                batch_changes[update.name] = update.run.changed
                report = update.report
                for target, names in ((info.patched, report.patched), (info.replaced, report.replaced),
                                      (info.added, report.added), (info.removed, report.removed)):
                    target.extend(names)
            reloaded_ns = time.monotonic_ns()
        finally:
            _code_overrides.clear()
        self.hooks("after", info)
        return reloaded_ns

    def hooks(self, when, info):
        failed = _run_hooks(when, info)
        if failed is not None:
            fn, exc = failed
            raise _Failure(_hook_error(fn, exc), None, None, exc, "hook")

    def run_module(self, update, batch_changes):
        """Runs one module's update, with its state hand-over hooks: a definition-level
        update in the module's namespace, a whole-module run inside importlib.reload (so
        the module's loader does it, as it does for the app's own importlib.reload)."""
        global _active
        module = update.module
        snapshot = dict(module.__dict__)
        run = _ModuleRun(module, snapshot, _batch_undo[0], update.report)
        run.definitions = update.definitions
        run.imported_changes = {name: names for name, names in batch_changes.items() if names}
        update.run = run
        save = snapshot.get("__pyhot_save__")
        state = save() if callable(save) else None
        _active = run
        builtins.__build_class__ = _build_class
        reloading = importlib._RELOADING  # Lib/importlib/__init__.py: reload's guard
        inside_reload = reloading.get(update.name) is module
        try:
            if run.definitions is not None:
                # The edited statements of the file the module was loaded from run in its
                # namespace, whatever spec importlib would find now: the module keeps its
                # spec, so re-finding it (tens of microseconds per module on every save)
                # would change nothing. Under reload's guard, so that the module's code
                # calling importlib.reload on itself returns at once, as it does inside
                # importlib.reload (which may be what started this batch: the app's own).
                reloading[update.name] = module
                try:
                    run.definitions.apply(run)
                finally:
                    if not inside_reload:
                        reloading.pop(update.name, None)
            elif inside_reload:
                # The app's importlib.reload(module) started this batch and has re-found
                # the spec: a nested reload of the same module would return at once.
                exec(update.code, module.__dict__)
            else:
                importlib.reload(module)
        finally:
            builtins.__build_class__ = _original_build_class
            _active = None
        if update.definitions is None:
            with _pyhot.Critical():
                _patch_module(run)
            run.changed = {name for name, value in module.__dict__.items()
                           if not _same_value(snapshot.get(name, _MISSING), value)}
            run.changed |= snapshot.keys() - module.__dict__.keys()
        restore = module.__dict__.get("__pyhot_restore__")
        if callable(restore):
            restore(state)

    def rollback(self, updates, info):
        """Step 5a: every namespace, function, class and cell the batch touched as it was;
        then the hooks' on_rollback callables, in reverse."""
        with _pyhot.Critical():
            _batch_undo[0].restore()
            for update in updates:
                run = update.run
                if run is None:
                    continue
                namespace = update.module.__dict__
                namespace.clear()
                namespace.update(run.snapshot)
                sys.modules[update.name] = update.module
        _run_rollbacks(info)

    def commit(self, changed, updates, changed_modules):
        """Step 5b: the files count as applied, the modules' states become what ran."""
        for path, (_data, digest) in changed.items():
            self.applied[path] = digest
            self.drop_pending(path)
        for update in updates:
            if update.definitions is not None:
                update.definitions.commit(update.module)
            else:
                if update.digest is not None:
                    self.applied[update.path] = update.digest
                # What ran is now this source: its state is rebuilt when next needed.
                _states.pop(update.name, None)
                if update.data is not None and update.code is not None:
                    _first_runs[update.name] = (update.path, update.data, update.code)
            if update.changed_file and (update.name not in changed_modules or len(changed) == 1):
                if update.code is not None:
                    _record_imports(update.name, update.path, code=update.code)
                elif update.definitions is not None:
                    update.definitions.record_imports(update.name)

    def failed(self, failure, plan, ran, reloads, batch, started):
        """The events of a batch that failed: the module (or hook) that raised, the ones
        that ran before it rolled back, the rest skipped."""
        error = failure.error
        ran_names = [u.name for u in ran if u.name != failure.module]
        index = self.index
        if failure.stage == "precheck":
            for name in plan:
                entry = {"module": name, "path": index.path_of(name), "duration_ms": 0.0,
                         "patched": [], "replaced": []}
                if name == failure.module or index.path_of(name) == failure.path:
                    entry.update(result="error", error=error)
                else:
                    entry.update(result="skipped", reason="the batch failed its pre-check")
                reloads.append(entry)
            # Nothing ran: the modules are those the batch was to run.
            batch.update(modules=list(plan), result="error", error=error,
                         duration_ms=_elapsed_ms(started))
        else:
            cause = failure.module or "a hook (%s)" % error.get("hook", "?")
            for name in ran_names:
                reloads.append({"module": name, "path": index.path_of(name), "result": "rolled_back",
                                "duration_ms": 0.0, "reason": "%s failed" % cause, "error": error,
                                "patched": [], "replaced": []})
            if failure.module is not None:
                reloads.append({"module": failure.module, "path": failure.path, "result": "rolled_back",
                                "duration_ms": failure.ms, "error": error, "patched": [], "replaced": []})
            done = set(ran_names) | {failure.module}
            for name in plan:
                if name not in done:
                    reloads.append({"module": name, "path": index.path_of(name), "result": "skipped",
                                    "reason": "the batch rolled back before it ran", "duration_ms": 0.0,
                                    "patched": [], "replaced": []})
            batch["modules"] = ran_names + ([failure.module] if failure.module else [])
            batch.update(result="rolled_back", error=error, duration_ms=_elapsed_ms(started))
        return {"reloads": reloads, "batch": batch, "failure": failure, "exception": failure.exception}

    def keep_pending(self, changed):
        for path in changed:
            if path not in self.pending:
                self.pending.append(path)

    def drop_pending(self, path):
        if path in self.pending:
            self.pending.remove(path)


_MODULE_MODE_RE = re.compile(r"""^__pyhot_reload__\s*=\s*["']module["']""", re.M)
_batch_undo = [None]  # the running batch's _Undo
engine = Engine(_index)


def set_strategy(strategy):
    """[reload] strategy: "dependents" (default) or "module"."""
    engine.strategy = strategy


def set_mode(mode):
    """[reload] mode: "definitions" (default) or "module"; ValueError for another."""
    if mode not in _MODES:
        raise ValueError("mode must be one of %s, not %r" % (", ".join(_MODES), mode))
    engine.mode = mode


def reload_batch(paths, module_names, batch_id=None):
    """The C side's entry point (lib/py_reload.c): engine.reload_batch, its result as the
    protocol's plain data."""
    outcome = engine.reload_batch(paths, module_names, batch_id)
    outcome.pop("failure", None)
    outcome.pop("exception", None)
    return outcome


def _restore_imports(saved):
    global _imports_generation
    for name, imports in saved.items():
        if imports is None:
            _imports.pop(name, None)
        else:
            _imports[name] = imports
    _imports_generation += 1
