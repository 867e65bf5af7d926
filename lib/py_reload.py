"""pyhot's reload engine, run inside pyhotd's interpreter as `_pyhot_reload`.

docs/reload.md is the user's account of these rules; this module is their implementation.
A batch goes through: plan (the changed modules, then their dependents, in dependency
order), pre-check (every changed source compiled), run (each module's namespace
snapshotted, its new top level run by importlib.reload with the code compiled here, its
functions and classes patched in place at once), and, if anything raised, rollback (every
namespace, function and class the batch touched restored). It runs on the python thread
only, with the GIL held, called from lib/py_reload.c.
"""

import abc
import ast
import builtins
import dis
import enum
import importlib
import importlib._bootstrap_external as _bootstrap_external
import os
import sys
import threading
import time
import types

import _pyhot

_MISSING = object()

# ---------------------------------------------------------------------------------------
# Code override: importlib.reload keeps its semantics (spec re-found, module attributes
# re-initialised, the module object kept) but executes the code compiled here from the
# bytes that were hashed. SourceLoader.get_code would otherwise accept a cached .pyc whose
# recorded source mtime (whole seconds) and size still match an edited file.

_code_overrides = {}  # realpath -> code object, only while a batch runs
_original_get_code = _bootstrap_external.SourceLoader.get_code


def _get_code(self, fullname, _original=_original_get_code):
    path = self.get_filename(fullname)
    real = _pyhot._realpath(path)
    if _code_overrides:
        code = _code_overrides.get(real)
        if code is not None:
            return code
    if not _pyhot._under_roots(real):
        return _original(self, fullname)
    # A watched module's first import: compiled from the bytes whose digest is recorded as
    # applied, so what counts as applied is exactly what ran (a .pyc could be stale, and
    # reading the file again later could see an edit made meanwhile).
    data = self.get_data(path)
    code = compile(data, path, "exec", dont_inherit=True)
    _pyhot._applied[real] = _pyhot._digest(data)
    _record_imports(fullname, real, code=code)
    return code


_bootstrap_external.SourceLoader.get_code = _get_code


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


def _source_imports(module_name, is_package, source):
    names = set()
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return names
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            _add_import(names, module_name, is_package, node.module, node.level,
                        tuple(alias.name for alias in node.names))
    return names


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
            names |= _source_imports(name, is_package, source if source is not None else _pyhot._read(path))
        except OSError:
            pass
    names.discard(name)
    names = frozenset(names)
    if _imports.get(name) != names:
        global _imports_generation
        _imports[name] = names
        _imports_generation += 1


_graph_cache = [None, None]  # [(watched modules, imports) it was built from, graph]


def _dependency_graph():
    """{watched module: set of watched modules it imports}. Rebuilt only when a module
    appeared or left, or one's imports changed, since it was last built."""
    watched = _pyhot._index_modules
    if _graph_cache[0] == (_pyhot._index_generation, _imports_generation):
        return _graph_cache[1]
    for name, (_module, path) in list(watched.items()):
        if name not in _imports:
            _record_imports(name, path)
    key = (_pyhot._index_generation, _imports_generation)
    graph = {name: {dep for dep in _imports[name] if dep in watched} for name in watched}
    _graph_cache[0], _graph_cache[1] = key, graph
    return graph


def _plan_order(changed, graph, with_dependents):
    """The modules to run: changed, plus (with_dependents) every watched module that
    imports one of them, transitively; each once, a module after everything it imports.
    Import cycles become one group each, run in the order the modules were first
    imported (their order in sys.modules)."""
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

    import_order = {name: i for i, name in enumerate(sys.modules)}
    nodes = sorted(selected, key=lambda n: import_order.get(n, len(import_order)))
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
                group.sort(key=lambda n: import_order.get(n, len(import_order)))
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
    def __init__(self):
        self.patched = []
        self.replaced = []

    def add_patched(self, name):
        if name not in self.patched:
            self.patched.append(name)

    def add_replaced(self, name, reason):
        entry = "%s (%s)" % (name, reason)
        if entry not in self.replaced:
            self.replaced.append(entry)


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
            and old.__defaults__ == new.__defaults__ and old.__kwdefaults__ == new.__kwdefaults__
            and old.__doc__ == new.__doc__ and old.__annotations__ == new.__annotations__):
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


def _update_class(old, namespace, new_cls, undo, report, seen):
    """Makes old hold the members in namespace (a class body's result, or new_cls's
    dict): new and changed members set, removed ones deleted. Functions that super()
    would resolve through new_cls are pointed at old."""
    current = undo.klass(old)
    qual = old.__module__ + "." + old.__qualname__
    is_abc = isinstance(old, abc.ABCMeta)
    for key, value in namespace.items():
        if key in _CLASS_SKIP or key == "__classcell__" or (is_abc and key == "_abc_impl"):
            continue
        prev = current.get(key, _MISSING)
        store = _merge_member(prev, value, qual + "." + key, undo, report, seen)
        if new_cls is not None:
            # Merged from a class that was built (not run through _build_class): its
            # functions' __class__ cells name it.
            for fn in _functions_of(store):
                _point_class_cells(fn, new_cls, old, undo)
        if prev is not store and not (type(prev) is type(store) and type(store) in _PLAIN_VALUES
                                      and prev == store):
            try:
                setattr(old, key, store)
            except (AttributeError, TypeError):
                pass
    for key in current.keys() - namespace.keys():
        if key in _CLASS_SKIP or key == "__doc__" or (is_abc and key in ("_abc_impl", "__abstractmethods__")):
            continue
        try:
            delattr(old, key)
        except (AttributeError, TypeError):
            pass
    if "__doc__" not in namespace and old.__dict__.get("__doc__") is not None:
        old.__doc__ = None
    if is_abc:
        abc.update_abstractmethods(old)
    report.patched.append(qual)


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
    if old.__dict__.get("__slots__") != new.__dict__.get("__slots__"):
        return False, "__slots__ changed"
    if getattr(old, "_fields", None) != getattr(new, "_fields", None):
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
    if (meta not in (type, abc.ABCMeta) or type(old) is not meta or old.__bases__ != (resolved or (object,))
            or old.__module__ != run.module.__name__):
        return _original_build_class(func, name, *bases, **kwds)
    exec(func.__code__, func.__globals__, namespace, closure=func.__closure__)
    if old.__dict__.get("__slots__") != namespace.get("__slots__"):
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
    with _pyhot.Critical():
        _update_class(old, namespace, None, run.undo, run.report, run.seen)
        if class_cell is not None:
            run.undo.cell(class_cell)
            class_cell.cell_contents = old
        stored_members = old.__dict__
        for key in namespace:
            stored = stored_members.get(key, _MISSING)
            if hasattr(type(stored), "__set_name__") and key != "__classcell__":
                type(stored).__set_name__(stored, old, key)
    run.updated.add(id(old))
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
# The batch.

_strategy = "dependents"


def set_strategy(strategy):
    global _strategy
    _strategy = strategy


def _elapsed_ms(start_ns):
    return (time.perf_counter_ns() - start_ns) / 1e6


def _reload_one(module, snapshot, undo):
    """Runs module's new top level (its namespace was snapshot before) with the module
    hooks, then patches it. Returns the patch report."""
    global _active
    report = _Report()
    state = _MISSING
    save = snapshot.get("__pyhot_save__")
    if callable(save):
        state = save()
    run = _ModuleRun(module, snapshot, undo, report)
    _active = run
    builtins.__build_class__ = _build_class
    try:
        importlib.reload(module)
    finally:
        builtins.__build_class__ = _original_build_class
        _active = None
    with _pyhot.Critical():
        _patch_module(run)
    restore = module.__dict__.get("__pyhot_restore__")
    if state is not _MISSING and callable(restore):
        restore(state)
    return report


_batch_counter = [0]  # ids for batches the daemon did not number (importlib.reload)


def reload_batch(paths, module_names, batch_id=None):
    """Reloads what a batch of changed paths (and explicit module names) maps to: the
    batch applies whole or not at all. Returns {"reloads": [...], "batch": {...}}."""
    started = time.perf_counter_ns()
    modules_count = _pyhot.refresh_index()
    # Files of a failed batch are not applied yet: they go again with this one, so fixing
    # the one broken file applies the whole edit.
    paths = list(paths) + [p for p in _pyhot._pending if p not in paths]
    index, applied = _pyhot._index, _pyhot._applied
    reloads = []
    changed = {}        # realpath -> (data, digest)
    changed_modules = []

    for raw in paths:
        path = _pyhot._realpath(raw)
        names = list(index.get(path, ()))
        try:
            data = _pyhot._read(path)
        except FileNotFoundError:
            for name in names or [None]:
                reloads.append({"module": name, "path": path, "result": "skipped",
                                "reason": "deleted; the module stays loaded" if name else "deleted",
                                "duration_ms": 0.0})
            if path in _pyhot._pending:
                _pyhot._pending.remove(path)
            continue
        except OSError as exc:
            reloads.append({"module": names[0] if names else None, "path": path,
                            "result": "error", "duration_ms": 0.0,
                            "error": _pyhot.describe_exception(exc)})
            continue
        digest = _pyhot._digest(data)
        if not names:
            reloads.append({"module": None, "path": path, "result": "skipped",
                            "reason": "not imported", "duration_ms": 0.0})
            continue
        if applied.get(path) == digest:
            for name in names:
                reloads.append({"module": name, "path": path, "result": "skipped",
                                "reason": "content unchanged", "duration_ms": 0.0})
            if path in _pyhot._pending:
                _pyhot._pending.remove(path)
            continue
        changed[path] = (data, digest)
        changed_modules.extend(n for n in names if n not in changed_modules)

    forced = [n for n in module_names if n in _pyhot._index_modules]
    for name in forced:
        path = _pyhot._index_modules[name][1]
        if path not in changed:
            try:
                data = _pyhot._read(path)
                changed[path] = (data, _pyhot._digest(data))
            except OSError:
                pass
        if name not in changed_modules:
            changed_modules.append(name)

    batch = {"paths": [_pyhot._realpath(p) for p in paths], "modules": [],
             "result": "skipped", "duration_ms": 0.0}
    if not changed_modules:
        if any(r["result"] == "error" for r in reloads):
            batch["result"] = "error"
        batch["duration_ms"] = _elapsed_ms(started)
        return {"reloads": reloads, "batch": batch}

    watched = _pyhot._index_modules

    def path_of(name):
        entry = watched.get(name)
        return entry[1] if entry is not None else None
    graph_before = {name: _imports.get(name) for name in changed_modules}

    def fail_precheck(failed_path, error, plan):
        _restore_imports(graph_before)
        for name in plan:
            entry = {"module": name, "path": path_of(name), "duration_ms": 0.0,
                     "patched": [], "replaced": []}
            if path_of(name) == failed_path:
                entry["result"] = "error"
                entry["error"] = error
            else:
                entry["result"] = "skipped"
                entry["reason"] = "the batch failed its pre-check"
            reloads.append(entry)
        batch.update(result="error", error=error, duration_ms=_elapsed_ms(started))
        _keep_pending(changed)
        return {"reloads": reloads, "batch": batch}

    # Pre-check: every changed source compiles, before anything runs. The new code's
    # imports enter the graph at once, so the plan follows the code about to run.
    codes = {}
    for path, (data, _digest) in changed.items():
        names = index.get(path, ())
        origin = _pyhot._module_origin(sys.modules[names[0]]) if names else path
        try:
            codes[path] = compile(data, origin or path, "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as exc:
            return fail_precheck(path, _pyhot.describe_exception(exc), changed_modules)
        if len(changed) > 1:
            # Another file of the batch may now be imported: the plan needs the new edges.
            # (With one file, its own imports cannot change who depends on it; they are
            # recorded after the run, keeping that work off the save -> run path.)
            for name in names:
                _record_imports(name, path, code=codes[path], source=data)

    graph = _dependency_graph()
    plan = _plan_order(changed_modules, graph, _strategy == "dependents")

    # A dependent whose file did not change still runs its current source, compiled here
    # too: never a cached .pyc.
    dependents_read = {}  # realpath -> digest of what ran
    for name in plan:
        path = path_of(name)
        if path is None or path in codes:
            continue
        try:
            data = _pyhot._read(path)
            codes[path] = compile(data, _pyhot._module_origin(sys.modules[name]) or path, "exec",
                                  dont_inherit=True)
            dependents_read[path] = _pyhot._digest(data)
        except (SyntaxError, ValueError, OSError) as exc:
            return fail_precheck(path, _pyhot.describe_exception(exc), plan)

    # Run, in plan order; a dependent whose file did not change runs its current source.
    snapshots = {name: (sys.modules[name], dict(sys.modules[name].__dict__)) for name in plan}
    undo = _Undo()
    done = []
    failure = None
    if batch_id is None:
        _batch_counter[0] -= 1
        batch_id = _batch_counter[0]
    info = BatchInfo(batch_id, batch["paths"], plan, "module")
    _code_overrides.update(codes)
    try:
        hook_failure = _run_hooks("before", info)
        if hook_failure is not None:
            failure = ("<hook %s>" % getattr(hook_failure[0], "__qualname__", "?"),
                       _hook_error(*hook_failure), 0.0)
        for name in plan if failure is None else ():
            module = sys.modules[name]
            module_started = time.perf_counter_ns()
            try:
                report = _reload_one(module, snapshots[name][1], undo)
            except BaseException as exc:
                failure = (name, _pyhot.describe_exception(exc, prefer_file=path_of(name)),
                           _elapsed_ms(module_started))
                break
            done.append((name, _elapsed_ms(module_started), report))
        if failure is None:
            for _name, _ms, report in done:
                info.patched.extend(report.patched)
                info.replaced.extend(report.replaced)
            hook_failure = _run_hooks("after", info)
            if hook_failure is not None:
                failure = ("<hook %s>" % getattr(hook_failure[0], "__qualname__", "?"),
                           _hook_error(*hook_failure), 0.0)
        # The end of the batch's last reload: the new code has run and been patched in.
        reloaded_ns = time.monotonic_ns()
    finally:
        _code_overrides.clear()

    if failure is not None:
        _restore_imports(graph_before)
        with _pyhot.Critical():
            undo.restore()
            for module, snapshot in snapshots.values():
                namespace = module.__dict__
                namespace.clear()
                namespace.update(snapshot)
                sys.modules[module.__name__] = module
        _run_rollbacks(info)
        failed_name, error, failed_ms = failure
        for name, ms, _report in done:
            reloads.append({"module": name, "path": path_of(name), "result": "rolled_back",
                            "duration_ms": ms, "reason": "%s failed" % failed_name,
                            "error": error, "patched": [], "replaced": []})
        by_hook = failed_name.startswith("<hook ")
        if not by_hook:
            reloads.append({"module": failed_name, "path": path_of(failed_name),
                            "result": "rolled_back", "duration_ms": failed_ms, "error": error,
                            "patched": [], "replaced": []})
        for name in plan[len(done) + (0 if by_hook else 1):]:
            reloads.append({"module": name, "path": path_of(name), "result": "skipped",
                            "reason": "the batch rolled back before it ran", "duration_ms": 0.0,
                            "patched": [], "replaced": []})
        batch["modules"] = [name for name, _ms, _r in done] + ([] if by_hook else [failed_name])
        batch.update(result="rolled_back", error=error, duration_ms=_elapsed_ms(started))
        _keep_pending(changed)
        return {"reloads": reloads, "batch": batch}

    for path, (_data, digest) in changed.items():
        applied[path] = digest
        if path in _pyhot._pending:
            _pyhot._pending.remove(path)
    applied.update(dependents_read)
    for name in plan:
        path = path_of(name)
        if path in codes and (name not in changed_modules or len(changed) == 1):
            _record_imports(name, path, code=codes[path])
    for name, ms, report in done:
        entry = {"module": name, "path": path_of(name), "result": "ok", "duration_ms": ms,
                 "patched": report.patched, "replaced": report.replaced}
        if name not in changed_modules:
            entry["reason"] = "imports a changed module"
        reloads.append(entry)
    _pyhot.note_reordered(modules_count)
    batch["modules"] = [name for name, _ms, _r in done]
    batch.update(result="ok", duration_ms=_elapsed_ms(started), reloaded_ns=reloaded_ns)
    return {"reloads": reloads, "batch": batch}


def _restore_imports(saved):
    global _imports_generation
    for name, imports in saved.items():
        if imports is None:
            _imports.pop(name, None)
        else:
            _imports[name] = imports
    _imports_generation += 1


def _keep_pending(changed):
    for path in changed:
        if path not in _pyhot._pending:
            _pyhot._pending.append(path)
