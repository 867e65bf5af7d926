"""Definition-level reload (docs/reload.md, "What runs again"), rule by rule, through the
real pyhotd: what is patched in place, what runs again and what does not, removed names,
class bodies, values that cannot be compared, import cycles, pending files, and
importlib.reload as the entry point."""

import os
import signal

import pytest


def edit(d, sub, rel, text):
    path = d.write(rel, text)
    return sub.wait_batch(path)


def by_module(reloads):
    return {r["module"]: r for r in reloads}


REGISTRY = """\
CALLS = []

class Registry:
    def __init__(self):
        self.functions = []
    def register(self, fn):
        CALLS.append(fn.__name__)
        self.functions.append(fn)
        return self
    def run(self):
        return [fn() for fn in self.functions]

registry = Registry()
CALLS.append('registry built')

@registry.register
def do():
    return 'one'

@registry.register
def do():
    return 'two'

@registry.register
def do():
    return 'three'
"""


def test_changed_body_is_patched_and_decorators_do_not_run_again(pyhotd):
    d = pyhotd({"reg.py": REGISTRY})
    sub = d.subscriber()
    d.exec("import reg; held = reg.registry; first = held.functions[1]")
    batch, reloads = edit(d, sub, "reg.py", REGISTRY.replace("'two'", "'TWO'"))
    assert batch["result"] == "ok", batch
    r = by_module(reloads)["reg"]
    assert r["mode"] == "definitions" and r["patched"] == ["reg.do"], r
    # Three statements named `do`, matched by place: only the second changed.
    assert d.eval("held.run()") == ["one", "TWO", "three"]
    assert d.eval("(reg.registry is held, held.functions[1] is first, reg.CALLS)") == \
        (True, True, ["registry built", "do", "do", "do"])


def test_new_statement_runs_against_the_existing_objects(pyhotd):
    d = pyhotd({"reg.py": REGISTRY})
    sub = d.subscriber()
    d.exec("import reg; held = reg.registry")
    batch, reloads = edit(d, sub, "reg.py", REGISTRY + "\n@registry.register\ndef do():\n    return 'four'\n")
    assert batch["result"] == "ok", batch
    assert by_module(reloads)["reg"]["added"] == [], reloads  # `do` was bound already
    assert d.eval("(held.run(), reg.CALLS[-1], reg.registry is held)") == \
        (["one", "two", "three", "four"], "do", True)


def test_unchanged_statements_do_not_run_and_readers_of_changed_names_do(pyhotd):
    d = pyhotd({
        "lib.py": "CONST = 1\n",
        "app.py": ("import lib\nfrom lib import CONST\nMADE = []\ndef make():\n    MADE.append(1)\n"
                   "    return object()\napp = make()\nZ = CONST + 1\nW = lib.CONST * 10\n"
                   "X = 5\nY = X + 1\n"),
    })
    sub = d.subscriber()
    d.exec("import app; held_app = app.app")
    batch, reloads = edit(d, sub, "lib.py", "CONST = 2\n")
    assert batch["result"] == "ok" and batch["modules"] == ["lib", "app"], batch
    assert d.eval("(app.CONST, app.Z, app.W, app.app is held_app, len(app.MADE))") == (2, 3, 20, True, 1)
    # In the module itself: a statement that reads a rebound name runs again.
    src = d.eval("open(app.__file__).read()")
    batch, _ = edit(d, sub, "app.py", src.replace("X = 5", "X = 7"))
    assert batch["result"] == "ok", batch
    assert d.eval("(app.Y, app.app is held_app, len(app.MADE))") == (8, True, 1)


def test_removed_names_leave_and_are_listed(pyhotd):
    d = pyhotd({"m.py": "A = 1\ndef gone():\n    return 1\nclass Old:\n    pass\ndef kept():\n    return 1\n"})
    sub = d.subscriber()
    d.exec("import m")
    batch, reloads = edit(d, sub, "m.py", "def kept():\n    return 2\n")
    assert batch["result"] == "ok", batch
    r = by_module(reloads)["m"]
    assert sorted(r["removed"]) == ["m.A", "m.Old", "m.gone"], r
    assert d.eval("(hasattr(m, 'A'), hasattr(m, 'gone'), hasattr(m, 'Old'), m.kept())") == \
        (False, False, False, 2)


MODEL = """\
CREATED = []

class Meta(type):
    def __new__(mcls, name, bases, ns):
        CREATED.append(name)
        return super().__new__(mcls, name, bases, ns)

class Model(metaclass=Meta):
    table = 'items'
    gone = 1
    def price(self):
        return 1
    @property
    def label(self):
        return 'v1'
"""


def test_class_body_updates_in_place_without_its_metaclass(pyhotd):
    d = pyhotd({"models.py": MODEL})
    sub = d.subscriber()
    d.exec("import models; K = models.Model; obj = K()")
    # Only a method and a property changed: patched, nothing runs.
    batch, reloads = edit(d, sub, "models.py", MODEL.replace("return 1", "return 2").replace("'v1'", "'v2'"))
    assert batch["result"] == "ok", batch
    assert "models.Model.price" in by_module(reloads)["models"]["patched"]
    assert d.eval("(obj.price(), obj.label, models.Model is K, models.CREATED)") == (2, "v2", True, ["Model"])
    # A new attribute, a removed one, a changed one: set and deleted through setattr.
    src = MODEL.replace("return 1", "return 2").replace("    gone = 1\n", "    added = 3\n") \
        .replace("'items'", "'goods'")
    batch, reloads = edit(d, sub, "models.py", src)
    assert batch["result"] == "ok", batch
    assert d.eval("(obj.table, obj.added, hasattr(K, 'gone'), models.Model is K, models.CREATED)") == \
        ("goods", 3, False, True, ["Model"])


def test_values_that_cannot_be_compared_do_not_fail_the_batch(pyhotd):
    pytest.importorskip("numpy")
    src = ("import numpy as np\nPAIR = (np.zeros(3), np.ones(3))\nclass K:\n    ARRAYS = [np.zeros(2), np.ones(2)]\n"
           "    TUPLE = (np.zeros(2), np.ones(2))\n"
           "    def f(self, scale=(np.ones(2), np.ones(2))):\n        return 1\n"
           "V = {v}\nPAIR2 = (np.arange(V), np.arange(V))\n")
    d = pyhotd({"arrays.py": src.format(v=3)})
    sub = d.subscriber()
    d.exec("import arrays; held = arrays.PAIR")
    batch, _ = edit(d, sub, "arrays.py", src.format(v=4).replace("return 1", "return 2"))
    assert batch["result"] == "ok", batch
    assert d.eval("(arrays.PAIR is held, len(arrays.PAIR2[0]), arrays.K().f())") == (True, 4, 2)
    # A whole-module run compares every value: still no error.
    batch, _ = edit(d, sub, "arrays.py", "__pyhot_reload__ = 'module'\n" + src.format(v=5))
    assert batch["result"] == "ok", batch


@pytest.mark.parametrize("mode", ["definitions", "module"])
def test_import_cycle_runs_in_one_stable_order(pyhotd, mode):
    d = pyhotd({"a.py": "X = 1\nimport b\n", "b.py": "from a import X\n"}, import_all=False, mode=mode)
    sub = d.subscriber()
    d.exec("import a")
    orders = []
    for value in (2, 3):
        batch, _ = edit(d, sub, "a.py", "X = %d\nimport b\n" % value)
        assert batch["result"] == "ok", batch
        orders.append(batch["modules"])
    # A rollback does not change it.
    batch, _ = edit(d, sub, "b.py", "from a import X\nraise RuntimeError\n")
    assert batch["result"] == "rolled_back", batch
    batch, _ = edit(d, sub, "b.py", "from a import X\n")
    batch, _ = edit(d, sub, "a.py", "X = 4\nimport b\n")
    orders.append(batch["modules"])
    assert orders == [["a", "b"]] * 3, orders
    assert d.eval("__import__('b').X") == 4


def test_a_pending_file_does_not_hold_back_other_files(pyhotd):
    d = pyhotd({"good.py": "V = 1\n", "bad.py": "W = 1\n"})
    sub = d.subscriber()
    bad = d.path("bad.py")
    batch, _ = edit(d, sub, "bad.py", "W = 2\nraise RuntimeError('still broken')\n")
    assert batch["result"] == "rolled_back", batch
    batch, reloads = edit(d, sub, "good.py", "V = 2\n")
    assert batch["result"] == "ok" and batch["pending"] == [bad], batch
    assert by_module(reloads)["bad"]["result"] == "error", reloads
    assert "still broken" in by_module(reloads)["bad"]["error"]["message"]
    assert d.eval("(__import__('good').V, __import__('bad').W)") == (2, 1)
    # Still pending: fixing it applies it.
    batch, _ = edit(d, sub, "bad.py", "W = 3\n")
    assert batch["result"] == "ok", batch
    assert d.eval("__import__('bad').W") == 3


def test_module_mode_per_module(pyhotd):
    src = "try:\n    RUNS += 1\nexcept NameError:\n    RUNS = 1\nV = {v}\n"
    d = pyhotd({"whole.py": "__pyhot_reload__ = 'module'\n" + src.format(v=1), "defs.py": src.format(v=1)})
    sub = d.subscriber()
    batch, reloads = edit(d, sub, "whole.py", "__pyhot_reload__ = 'module'\n" + src.format(v=2))
    assert by_module(reloads)["whole"]["mode"] == "module"
    batch, reloads = edit(d, sub, "defs.py", src.format(v=2))
    assert by_module(reloads)["defs"]["mode"] == "definitions"
    assert d.eval("(__import__('whole').RUNS, __import__('defs').RUNS)") == (2, 1)


def test_importlib_reload_is_the_entry_point(pyhotd):
    d = pyhotd({"m.py": "RUNS = []\nRUNS.append(1)\ndef f():\n    return 1\n"}, import_all=False)
    d.exec("import m, importlib, _pyhot_reload\nseen = []\n"
           "_pyhot_reload.add_hook('after', lambda info: seen.append(info.modules))\nheld = m.f")
    d.write("m.py", "RUNS = []\nRUNS.append(1)\ndef f():\n    return 2\n")
    # Nobody waits for the watcher here: the app's own reload applies the file now.
    d.exec("importlib.reload(m)")
    assert d.eval("(m.f(), held(), len(m.RUNS), ('m',) in seen)") == (2, 2, 1, True)
    # A failing reload raises in the caller and changes nothing.
    d.write("m.py", "RUNS = []\ndef f():\n    return 3\nraise ValueError('nope')\n")
    d.exec("try:\n    importlib.reload(m)\nexcept ValueError as exc:\n    caught = str(exc)\n")
    assert d.eval("(caught, m.f(), len(m.RUNS))") == ("nope", 2, 1)


def test_definition_update_keeps_the_spec_and_a_self_reload_returns_at_once(pyhotd):
    src = ("import importlib, sys\nV = {v}\nRUNS = []\n"
           "SELF = importlib.reload(sys.modules[__name__]) if V > 1 else None\n"
           "RUNS.append(V)\n")
    d = pyhotd({"m.py": src.format(v=1)})
    sub = d.subscriber()
    d.exec("import m; spec = m.__spec__")
    batch, reloads = edit(d, sub, "m.py", src.format(v=2))
    assert batch["result"] == "ok", reloads
    assert by_module(reloads)["m"]["mode"] == "definitions"
    # The statement that reads V ran once: its importlib.reload of its own module returned
    # the module at once, as it does inside importlib.reload, instead of updating again.
    assert d.eval("(m.SELF is m, m.RUNS, m.__spec__ is spec)") == (True, [1, 2], True)


def test_restore_without_save_and_conform(pyhotd):
    src = ("GOT = []\ndef __pyhot_restore__(state):\n    GOT.append(state)\n"
           "def f():\n    return {v}\nf.__conform__ = lambda new: HANDED.append(new)\nHANDED = []\n")
    d = pyhotd({"m.py": src.format(v=1)})
    sub = d.subscriber()
    d.exec("import m; held = m.f")
    batch, _ = edit(d, sub, "m.py", src.format(v=2))
    assert batch["result"] == "ok", batch
    # __conform__ was handed the new function instead of a patch: the old code stays.
    assert d.eval("(m.GOT, held(), len(m.HANDED), m.HANDED[0]())") == ([None], 1, 1, 2)
    # Its definition removed: __conform__ is handed None.
    batch, reloads = edit(d, sub, "m.py", "GOT = []\nHANDED = []\n")
    assert batch["result"] == "ok" and "m.f" in reloads[0]["removed"], reloads
    assert d.eval("(m.HANDED[-1], hasattr(m, 'f'))") == (None, False)


def test_rollback_undoes_added_removed_and_class_updates(pyhotd):
    src = "A = 1\nclass K:\n    X = 1\n    def f(self):\n        return 1\n"
    d = pyhotd({"m.py": src})
    sub = d.subscriber()
    d.exec("import m; obj = m.K()")
    batch, _ = edit(d, sub, "m.py", "class K:\n    Y = 2\n    def f(self):\n        return 2\nNEW = 1\n"
                                    "raise RuntimeError\n")
    assert batch["result"] == "rolled_back", batch
    assert d.eval("(m.A, hasattr(m, 'NEW'), m.K.X, hasattr(m.K, 'Y'), obj.f())") == (1, False, 1, False, 1)


def test_on_demand_is_the_default(pyhotd):
    d = pyhotd({"lazy.py": "V = 1\n"}, import_all=False)
    sub = d.subscriber()
    assert d.eval("'lazy' in __import__('sys').modules") is False
    assert "on demand" in d.log()
    batch, reloads = edit(d, sub, "lazy.py", "V = 2\n")
    assert reloads[0]["result"] == "skipped" and reloads[0]["reason"] == "not imported", reloads
    assert d.eval("__import__('lazy').V") == 2


def test_dataclass_field_added_runs_its_decorator_on_the_same_class(pyhotd):
    src = ("import dataclasses\n@dataclasses.dataclass(frozen=True)\nclass Point:\n    x: int = 0\n{extra}"
           "    def norm(self):\n        return abs(self.x)\n")
    d = pyhotd({"geo.py": src.format(extra="")})
    sub = d.subscriber()
    d.exec("import geo; P = geo.Point; old = P(3)")
    batch, _ = edit(d, sub, "geo.py", src.format(extra="    y: int = 5\n"))
    assert batch["result"] == "ok", batch
    assert d.eval("(geo.Point is P, geo.Point(1, 2).y, geo.Point(1).y, old.norm(), "
                  "[f.name for f in __import__('dataclasses').fields(P)])") == (True, 2, 5, 3, ["x", "y"])


def test_functions_below_an_added_line_report_their_new_lines(pyhotd):
    src = "def a():\n    return 1\n{extra}def b():\n    raise ValueError\nclass K:\n    def m(self):\n        raise KeyError\n"
    d = pyhotd({"lines.py": src.format(extra="")})
    sub = d.subscriber()
    d.exec("import lines, traceback\ndef where(fn):\n    try:\n        fn()\n    except Exception as e:\n"
           "        return traceback.extract_tb(e.__traceback__)[-1].lineno")
    assert d.eval("(where(lines.b), where(lines.K().m))") == (4, 7)
    batch, _ = edit(d, sub, "lines.py", src.format(extra="# two\n# lines\n"))
    assert batch["result"] == "ok", batch
    assert d.eval("(where(lines.b), where(lines.K().m), lines.b.__code__.co_firstlineno)") == (6, 9, 5)


def test_a_statement_reading_a_removed_name_fails_the_batch(pyhotd):
    d = pyhotd({"m.py": "def helper():\n    return 1\nX = helper()\n"})
    sub = d.subscriber()
    batch, reloads = edit(d, sub, "m.py", "X = helper()\n")
    assert batch["result"] == "rolled_back", batch
    assert batch["error"]["type"] == "NameError" and batch["error"]["line"] == 1, batch
    assert d.eval("(__import__('m').X, __import__('m').helper())") == (1, 1)


def test_importlib_reload_from_the_apps_own_thread(pyhotd):
    # The watcher is kept out (paused): only the app's reload applies the edit.
    app = ("import importlib, queue, m\nASK, ANSWERS = queue.Queue(), queue.Queue()\n"
           "def main():\n    while True:\n        ASK.get()\n        try:\n"
           "            importlib.reload(m)\n            ANSWERS.put(m.f())\n"
           "        except Exception as exc:\n            ANSWERS.put(repr(exc))\n")
    d = pyhotd({"m.py": "def f():\n    return 1\n", "app.py": app}, import_all=False,
               args=["--entry", "app:main"])
    d.conn.call("pause")
    d.exec("import _pyhot_reload, app, m\nbatches = []\nheld = m.f\n"
           "_pyhot_reload.add_hook('after', lambda info: batches.append((info.batch, info.modules)))")
    d.write("m.py", "def f():\n    return 2\n")
    assert d.eval("(app.ASK.put(1), app.ANSWERS.get(timeout=10))") == (None, 2)
    assert d.eval("(held(), [b for b in batches if b[0] < 0])") == (2, [(-1, ("m", "app"))])


def test_mode_changes_on_sighup(pyhotd):
    config = "[daemon]\nsocket = {socket}\n[watch]\nroot = {root}\n"
    d = pyhotd({"m.py": "V = 1\n"}, config=config)
    sub = d.subscriber()
    _, reloads = edit(d, sub, "m.py", "V = 2\n")
    assert reloads[0]["mode"] == "definitions", reloads
    with open(os.path.join(d.base, "pyhotd.conf"), "a") as f:
        f.write("[reload]\nmode = module\n")
    d.proc.send_signal(signal.SIGHUP)
    event = sub.next_event(lambda e: e["event"] == "config_reloaded")
    assert "mode" in event["changed"], event
    _, reloads = edit(d, sub, "m.py", "V = 3\n")
    assert reloads[0]["mode"] == "module", reloads


def test_importlib_reload_of_a_module_outside_the_roots_is_plain(pyhotd, tmp_path):
    lib = tmp_path / "outside"
    lib.mkdir()
    (lib / "plainmod.py").write_text("RUNS = globals().get('RUNS', 0) + 1\n")
    d = pyhotd(args=["--python-path", str(lib)])
    d.exec("import importlib, plainmod\nimportlib.reload(plainmod)")
    assert d.eval("plainmod.RUNS") == 2


ADMIN = """\
REGISTERED = []

def register(cls):
    REGISTERED.append(cls.__name__)
    return cls

class Base:
    def hello(self):
        return 'base'

@register
class Admin(Base):
    def hello(self):
        return 'admin ' + super().hello()

    @property
    def size(self):
        return self._size if hasattr(self, '_size') else 0
{extra}"""


def test_methods_added_to_a_decorated_class_do_not_run_its_decorator(pyhotd):
    d = pyhotd({"admin.py": ADMIN.format(extra="")})
    sub = d.subscriber()
    d.exec("import admin; A = admin.Admin; obj = A()")
    extra = ("\n    @size.setter\n    def size(self, value):\n        self._size = value\n"
             "\n    def shout(self):\n        return super().hello().upper()\n")
    batch, reloads = edit(d, sub, "admin.py", ADMIN.format(extra=extra).replace("'admin '", "'ADMIN '"))
    assert batch["result"] == "ok", batch
    r = by_module(reloads)["admin"]
    assert "admin.Admin.shout" in r["added"] and "admin.Admin.hello" in r["patched"], r
    d.exec("obj.size = 5")
    assert d.eval("(admin.REGISTERED, admin.Admin is A, obj.hello(), obj.shout(), obj.size, "
                  "A.shout.__qualname__)") == (["Admin"], True, "ADMIN base", "BASE", 5, "Admin.shout")
