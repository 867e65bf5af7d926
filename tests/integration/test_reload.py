"""Reloads through the real pyhotd, by the engine's steps (docs/reload.md, DESIGN "Reload
semantics"), observed through events and `exec`: an edit's events and the state it keeps,
pre-check, rollback, dependents in order, patching in place with identity, deadlines,
pending files, module mapping, what counts as a change (content digests, stale .pyc),
state hand-over, and the app across reloads."""

import glob
import importlib.util
import os
import py_compile
import re
import struct
import time

import pytest

from conftest import QUIET, SCALE, Client, wait_for

MODES = ["definitions", "module"]


def edit(d, sub, rel, text):
    """Writes rel and waits for the batch that contains it: (batch, reloads)."""
    path = d.write(rel, text)
    return sub.wait_batch(path)


def by_module(reloads):
    return {r["module"]: r for r in reloads}


TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")

STATEFUL = """\
VALUE = {value}
try:
    HISTORY
except NameError:
    HISTORY = []
HISTORY.append(VALUE)


def get():
    return VALUE
"""


def reloads_and_batches(events):
    return [e for e in events if e["event"] in ("reload", "batch")]


# ---- 0. an edit -------------------------------------------------------------------------

def test_edit_gives_one_ok_reload_and_keeps_state(pyhotd):
    d = pyhotd({"m.py": STATEFUL.format(value=1)})
    assert d.module_value("m", "VALUE") == 1
    assert d.module_value("m", "HISTORY") == [1]
    sub = d.subscriber()

    path = d.write("m.py", STATEFUL.format(value=2))
    batch, reloads = sub.wait_batch(path)

    assert batch["result"] == "ok", batch
    assert batch["paths"] == [path]
    assert batch["modules"] == ["m"]
    assert isinstance(batch["duration_ms"], (int, float)) and batch["duration_ms"] >= 0
    assert isinstance(batch["latency_ms"], (int, float)) and batch["latency_ms"] >= 0
    assert len(reloads) == 1, reloads
    r = reloads[0]
    assert (r["module"], r["path"], r["result"]) == ("m", path, "ok")
    assert isinstance(r["patched"], list) and isinstance(r["replaced"], list)
    assert "error" not in r
    for e in (r, batch):
        assert TIME_RE.match(e["time"]), e["time"]
    assert r["seq"] < batch["seq"]
    # Exactly one: no second reload or batch for the same edit.
    assert reloads_and_batches(sub.quiet()) == []

    # The new code runs; the state the module keeps by the NameError idiom survived.
    assert d.module_value("m", "VALUE") == 2
    assert d.module_value("m", "HISTORY") == [1, 2]
    assert d.eval("m.get()", setup="import m") == 2
    st = d.status()
    assert st["reloads"]["ok"] == 1 and st["batches"] == 1
    assert st["last_batch"]["batch"] == batch["batch"]


# ---- 1. pre-check -----------------------------------------------------------------------

def test_syntax_error_in_a_batch_touches_nothing(pyhotd):
    """A good edit of a and a broken one of b in one batch (written while the watcher is
    paused): the batch fails at the pre-check, a is skipped, neither runs."""
    d = pyhotd({"a.py": "A = 1\n", "b.py": "B = 1\n"})
    sub = d.subscriber()
    d.exec("import a, b")
    with d.one_batch(2):
        path_a = d.write("a.py", "A = 2\n")
        path_b = d.write("b.py", "B = 2\nif B:\n    x = (\n")
    batch, reloads = sub.wait_batch(path_b)
    assert batch["result"] == "error", batch
    assert path_a in batch["paths"], batch
    error = batch["error"]
    assert error["type"] == "SyntaxError"
    assert error["file"] == path_b and error["line"] == 3 and error["column"] >= 1, error
    results = by_module(reloads)
    assert results["b"]["result"] == "error" and results["b"]["error"]["file"] == path_b
    assert results["a"]["result"] == "skipped", reloads
    # Nothing ran: neither module took its new value.
    assert d.eval("(a.A, b.B)") == (1, 1)


def test_syntax_error_keeps_old_code_then_fix_applies(pyhotd):
    d = pyhotd({"m.py": STATEFUL.format(value=1)})
    sub = d.subscriber()

    broken = "VALUE = 2\n\n\ndef broken(:\n    return 1\n"
    path = d.write("m.py", broken)
    batch, reloads = sub.wait_batch(path)
    assert batch["result"] == "error", batch
    assert [r["result"] for r in reloads] == ["error"], reloads
    error = reloads[0]["error"]
    assert error["type"] == "SyntaxError"
    assert error["line"] == 4, error
    assert error["file"] == path, error
    assert error["message"]
    assert batch["error"]["line"] == 4
    # Nothing ran: the old code still answers.
    assert d.module_value("m", "VALUE") == 1
    assert d.eval("m.get()", setup="import m") == 1
    assert d.module_value("m", "HISTORY") == [1]
    assert d.eval("hasattr(m, 'broken')") is False

    d.write("m.py", STATEFUL.format(value=3))
    batch, reloads = sub.wait_batch(path)
    assert batch["result"] == "ok", batch
    assert [(r["module"], r["result"]) for r in reloads] == [("m", "ok")]
    assert d.module_value("m", "VALUE") == 3
    assert d.module_value("m", "HISTORY") == [1, 3]
    st = d.status()
    assert st["reloads"]["error"] == 1 and st["reloads"]["ok"] == 1


# ---- 2. rollback --------------------------------------------------------------------------

@pytest.mark.parametrize("raise_stmt", [
    "raise ValueError('bad')",
    "raise SystemExit(3)",
    "raise KeyboardInterrupt()",
])
@pytest.mark.parametrize("mode", MODES)
def test_any_exception_rolls_back_every_module_of_the_batch(pyhotd, raise_stmt, mode):
    d = pyhotd({"base.py": "LIMIT = 1\n",
                "user.py": "from base import LIMIT\nDOUBLE = LIMIT * 2\n"}, mode=mode)
    sub = d.subscriber()
    # base changes fine; user (its dependent) raises, once base's new value reaches it,
    # after binding a new name.
    edit(d, sub, "user.py", "from base import LIMIT\nDOUBLE = LIMIT * 2\nADDED = LIMIT\n"
                            "if LIMIT > 1:\n    " + raise_stmt + "\n")
    path = d.write("base.py", "LIMIT = 5\n")
    batch, reloads = sub.wait_batch(path)
    assert batch["result"] == "rolled_back", batch
    assert batch["error"]["type"] in ("ValueError", "SystemExit", "KeyboardInterrupt")
    assert {r["result"] for r in reloads if r["module"] in ("base", "user")} == {"rolled_back"}
    # Old values back in both modules; the name the failed run added is gone.
    assert d.eval("(__import__('base').LIMIT, __import__('user').DOUBLE)") == (1, 2)
    assert d.eval("__import__('user').ADDED") == 1
    assert d.alive()


@pytest.mark.parametrize("mode", MODES)
def test_rollback_restores_patched_functions_and_classes(pyhotd, mode):
    d = pyhotd({"lib.py": "V = 1\ndef f():\n    return 1\nclass K:\n    def m(self):\n        return 1\n",
                "app.py": "import lib\n"}, mode=mode)
    sub = d.subscriber()
    d.exec("import lib, app; held_f = lib.f; k = lib.K()")
    # lib reloads and is patched, then its dependent fails: the patch must be undone.
    edit(d, sub, "app.py", "from lib import V\nif V == 2:\n    raise RuntimeError('no')\n")
    path = d.write("lib.py", "V = 2\ndef f():\n    return 2\nclass K:\n    def m(self):\n        return 2\n")
    batch, _ = sub.wait_batch(path)
    assert batch["result"] == "rolled_back", batch
    assert d.eval("(held_f(), lib.f(), k.m(), lib.K().m(), held_f is lib.f)") == (1, 1, 1, 1, True)


def test_exception_at_top_level_rolls_back(pyhotd):
    d = pyhotd({"m.py": STATEFUL.format(value=1)})
    d.exec("import m\nold_get = m.get")
    sub = d.subscriber()

    failing = ("VALUE = 2\n"
               "ADDED_BY_FAILED_RUN = 'new'\n"
               "def get():\n"
               "    return 'new code'\n"
               "raise RuntimeError('boom at import')\n")
    path = d.write("m.py", failing)
    batch, reloads = sub.wait_batch(path)
    assert batch["result"] == "rolled_back", batch
    assert [(r["module"], r["result"]) for r in reloads] == [("m", "rolled_back")], reloads
    error = reloads[0]["error"]
    assert error["type"] == "RuntimeError"
    assert "boom at import" in error["message"]
    assert error["file"] == path and error["line"] == 5, error
    assert "boom at import" in error["traceback"]

    # The module's namespace is the snapshot again: old values, old function, and the
    # names the failed run added are gone.
    assert d.module_value("m", "VALUE") == 1
    assert d.eval("m.get()") == 1
    assert d.eval("m.get is old_get") is True
    assert d.eval("hasattr(m, 'ADDED_BY_FAILED_RUN')") is False
    assert d.module_value("m", "HISTORY") == [1]
    assert d.eval("sys.modules['m'] is m", setup="import sys") is True
    assert d.status()["reloads"]["rolled_back"] == 1

    d.write("m.py", STATEFUL.format(value=4))
    batch, _ = sub.wait_batch(path)
    assert batch["result"] == "ok", batch
    assert d.module_value("m", "VALUE") == 4


def test_failed_batch_rolls_back_every_module_and_stays_pending(pyhotd):
    """Two files in one batch (written while the watcher is paused): b raises, so a's good
    edit is rolled back too; fixing b alone then applies both."""
    d = pyhotd({"a.py": "VALUE = 'a1'\n", "b.py": "VALUE = 'b1'\n"})
    sub = d.subscriber()

    with d.one_batch(2):
        pa = d.write("a.py", "VALUE = 'a2'\n")
        pb = d.write("b.py", "VALUE = 'b2'\nraise ValueError('b is broken')\n")
    batch, reloads = sub.wait_batch(pb)
    assert sorted(batch["paths"]) == sorted([pa, pb]), batch
    assert batch["result"] == "rolled_back", batch
    by_module = {r["module"]: r for r in reloads}
    assert by_module["b"]["result"] == "rolled_back", reloads
    # a is part of the batch: whether it ran before b or not, it must not count as applied.
    assert by_module.get("a", {}).get("result") != "ok", reloads
    assert d.module_value("a", "VALUE") == "a1"
    assert d.module_value("b", "VALUE") == "b1"

    # Only b is fixed; a's pending edit goes with this batch.
    d.write("b.py", "VALUE = 'b3'\n")
    batch, reloads = sub.wait_batch(pb)
    assert batch["result"] == "ok", batch
    assert pa in batch["paths"], batch
    assert sorted(r["module"] for r in reloads if r["result"] == "ok") == ["a", "b"], reloads
    assert d.module_value("a", "VALUE") == "a2"
    assert d.module_value("b", "VALUE") == "b3"


def test_failed_batch_reports_every_module(pyhotd):
    """Every module of a failed batch gets a reload event (rolled_back or skipped), not only
    those that ran before the failing one."""
    d = pyhotd({"a.py": "VALUE = 1\n", "b.py": "VALUE = 1\n", "c.py": "VALUE = 1\n"})
    sub = d.subscriber()
    with d.one_batch(3):
        paths = [d.write("a.py", "VALUE = 2\n"),
                 d.write("b.py", "VALUE = 2\nraise KeyError('b')\n"),
                 d.write("c.py", "VALUE = 2\n")]
    batch, reloads = sub.wait_batch(paths[1])
    assert sorted(batch["paths"]) == sorted(paths)
    assert batch["result"] == "rolled_back"
    results = {r["module"]: r["result"] for r in reloads}
    assert set(results) == {"a", "b", "c"}, reloads
    assert results["b"] == "rolled_back"
    assert all(v in ("rolled_back", "skipped") for v in results.values()), results
    for m in "abc":
        assert d.module_value(m, "VALUE") == 1


# ---- 3. dependents ------------------------------------------------------------------------

COUNTED = """\
{imports}
try:
    RUNS
except NameError:
    RUNS = 0
RUNS += 1
import trace_log
trace_log.ORDER.append(__name__)
"""


def test_dependents_run_once_each_in_dependency_order(pyhotd):
    # d imports c and b; c imports b; b imports a: an edit of a and c in one batch (c's
    # file written first) must run a, b, c, d, each once (whole modules: mode = module;
    # test_reload_definitions.py has the definition-level counterpart).
    modules = {
        "trace_log.py": "try:\n    ORDER\nexcept NameError:\n    ORDER = []\n",
        "a.py": COUNTED.format(imports="X = 1"),
        "b.py": COUNTED.format(imports="import a"),
        "c.py": COUNTED.format(imports="import b"),
        "d.py": COUNTED.format(imports="import c, b"),
        "unrelated.py": COUNTED.format(imports=""),
    }
    d = pyhotd(modules, mode="module")
    sub = d.subscriber()
    d.exec("import trace_log; trace_log.ORDER.clear()")
    with d.one_batch(2):
        d.write("c.py", COUNTED.format(imports="import b\nY = 2"))
        path = d.write("a.py", COUNTED.format(imports="X = 2"))
    batch, reloads = sub.wait_batch(path)
    assert batch["result"] == "ok", batch
    assert batch["modules"] == ["a", "b", "c", "d"], batch
    assert d.eval("trace_log.ORDER") == ["a", "b", "c", "d"]
    assert d.eval("[__import__(m).RUNS for m in 'abcd'] + [__import__('unrelated').RUNS]") == [2, 2, 2, 2, 1]
    assert by_module(reloads)["d"]["reason"] == "imports a changed module"


def test_from_import_of_a_plain_value_counts(pyhotd):
    d = pyhotd({"settings.py": "TIMEOUT = 5\n",
                "client.py": "from settings import TIMEOUT\ndef timeout():\n    return TIMEOUT\n"})
    sub = d.subscriber()
    batch, _ = edit(d, sub, "settings.py", "TIMEOUT = 30\n")
    assert batch["modules"] == ["settings", "client"]
    assert d.eval("__import__('client').timeout()") == 30


def test_import_cycle_is_reloaded_once_each(pyhotd):
    d = pyhotd({"ping.py": "import pong\nN = 1\n", "pong.py": "import ping\nM = 1\n",
                "user.py": "import ping\n"})
    sub = d.subscriber()
    batch, reloads = edit(d, sub, "pong.py", "import ping\nM = 2\n")
    assert batch["result"] == "ok", batch
    assert sorted(batch["modules"][:2]) == ["ping", "pong"] and batch["modules"][2] == "user"
    assert len(reloads) == 3


def test_graph_follows_new_imports(pyhotd):
    d = pyhotd({"a.py": "V = 1\n", "b.py": "W = 1\n"})
    sub = d.subscriber()
    batch, _ = edit(d, sub, "a.py", "V = 2\n")
    assert batch["modules"] == ["a"]
    # b starts importing a: from now on an edit of a reloads b too.
    edit(d, sub, "b.py", "import a\nW = a.V\n")
    batch, _ = edit(d, sub, "a.py", "V = 3\n")
    assert batch["modules"] == ["a", "b"]
    assert d.module_value("b", "W") == 3


def test_strategy_module_reloads_only_the_changed_module(pyhotd):
    d = pyhotd({"a.py": "V = 1\n", "b.py": "import a\nW = a.V\n"},
               config="[daemon]\nsocket = {socket}\n[watch]\nroot = {root}\n[reload]\nstrategy = module\n")
    sub = d.subscriber()
    batch, _ = edit(d, sub, "a.py", "V = 2\n")
    assert batch["modules"] == ["a"]
    assert d.module_value("b", "W") == 1


# ---- 4. patching in place -----------------------------------------------------------------

PKG = {
    "shop/__init__.py": "",
    "shop/base.py": """\
import functools

try:
    REGISTRY
except NameError:
    REGISTRY = {}

TAX = 10


def register(cls):
    # import-time code that checks classes against Base
    assert issubclass(cls, Base), cls
    REGISTRY[cls.__name__] = cls
    return cls


def traced(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)
    return wrapper


class Base:
    def price(self):
        return self.net() + self.tax()

    def tax(self):
        return TAX

    def label(self):
        return "base-v1"
""",
    "shop/models.py": """\
import dataclasses
import enum
import collections
from shop.base import Base, register, traced, TAX


@register
class Item(Base):
    def __init__(self, net):
        self.net_value = net

    def net(self):
        return self.net_value

    def label(self):
        return "item-v1/" + super().label()

    @staticmethod
    def kind():
        return "static-v1"

    @classmethod
    def make(cls, net):
        return cls(net)

    @property
    def shown(self):
        return "prop-v1"


@traced
def describe(item):
    return "describe-v1 %s" % item.price()


@dataclasses.dataclass(frozen=True)
class Point:
    x: int

    def norm(self):
        return abs(self.x)


class Color(enum.Enum):
    RED = 1


Pair = collections.namedtuple("Pair", "a b")


def counter_factory():
    count = 0
    def bump():
        return count + 1
    return bump


bump = counter_factory()
""",
    "shop/service.py": """\
from shop import models
from shop.models import describe


def checkout(net):
    return describe(models.Item(net))
""",
}


def test_package_edit_of_a_deep_module_patches_everything(pyhotd):
    d = pyhotd(PKG)
    sub = d.subscriber()
    d.exec("""\
import pickle
from shop import base, models, service
old_item = models.Item(100)
held_Item = models.Item
held_describe = models.describe
held_checkout = service.checkout
old_point = models.Point(-3)
old_color = models.Color
""")
    assert d.eval("old_item.price()") == 110

    # The deep module changes: tax and label; the registry check runs again at import time.
    src = PKG["shop/base.py"].replace("TAX = 10", "TAX = 20").replace("base-v1", "base-v2")
    batch, reloads = edit(d, sub, "shop/base.py", src)
    assert batch["result"] == "ok", batch
    assert batch["modules"] == ["shop.base", "shop.models", "shop.service"], batch
    # Objects made before the edit and after it both run the new code.
    assert d.eval("(old_item.price(), models.Item(1).price(), old_item.label())") == \
        (120, 21, "item-v1/base-v2")
    # Identity kept in the module and in its dependents; no second Item class.
    assert d.eval("(models.Item is held_Item, base.REGISTRY['Item'] is models.Item, "
                  "service.models.Item is held_Item, isinstance(old_item, models.Item), "
                  "issubclass(models.Item, base.Base))") == (True, True, True, True, True)
    assert d.eval("pickle.loads(pickle.dumps(old_item)).price()") == 120

    # Now the middle module: methods, static/class methods, properties, super(), decorators.
    src = (PKG["shop/models.py"].replace("item-v1", "item-v2").replace("static-v1", "static-v2")
           .replace("prop-v1", "prop-v2").replace("describe-v1", "describe-v2")
           .replace("return abs(self.x)", "return abs(self.x) * 10")
           .replace("RED = 1", "RED = 1\n    BLUE = 2")
           .replace('"Pair", "a b"', '"Pair", "a b c"')
           .replace("return count + 1", "return count + step"))
    src = src.replace("    count = 0\n", "    count = 0\n    step = 5\n")
    batch, reloads = edit(d, sub, "shop/models.py", src)
    assert batch["result"] == "ok", batch
    assert batch["modules"] == ["shop.models", "shop.service"], batch
    models = by_module(reloads)["shop.models"]
    for name in ("shop.models.Item", "shop.models.describe", "shop.models.Point"):
        assert name in models["patched"], models
    assert "shop.models.Color" in models["replaced"] and "shop.models.Pair" in models["replaced"], models
    assert models["replaced_reasons"]["shop.models.Color"] == "enum", models
    assert models["replaced_reasons"]["shop.models.Pair"] == "fields changed", models
    assert d.eval("(old_item.label(), models.Item.kind(), models.Item.make(1).shown, old_item.shown)") == \
        ("item-v2/base-v2", "static-v2", "prop-v2", "prop-v2")
    # Held references run the new code, and are the same objects.
    assert d.eval("(held_describe(old_item), held_describe is models.describe, "
                  "held_checkout(1), service.describe is models.describe)") == \
        ("describe-v2 120", True, "describe-v2 21", True)
    # Frozen dataclass: old and new instances, new method, still frozen.
    assert d.eval("(old_point.norm(), models.Point(4).norm(), type(old_point) is models.Point)") == (30, 40, True)
    assert d.eval("__import__('dataclasses').is_dataclass(models.Point)") is True
    frozen = d.conn.request("exec", code="old_point.x = 5")
    assert frozen["ok"] is False and frozen["error"]["type"].endswith("FrozenInstanceError")
    # Enum replaced: the module names the new one.
    assert d.eval("(models.Color is old_color, [c.name for c in models.Color])") == (False, ["RED", "BLUE"])
    assert d.eval("models.Pair._fields") == ("a", "b", "c")


def test_function_whose_free_variables_change_is_replaced(pyhotd):
    # `inner = make()` runs again only when a whole module runs (mode = module): at the
    # definition level, make's new body is patched in and the unchanged statement that
    # called it stays as it ran.
    d = pyhotd({"f.py": "def make():\n    a = 1\n    def inner():\n        return a\n    return inner\n"
                        "inner = make()\n"}, mode="module")
    sub = d.subscriber()
    d.exec("import f; held = f.inner")
    batch, reloads = edit(d, sub, "f.py", "def make():\n    a = 1\n    b = 2\n    def inner():\n"
                                          "        return a + b\n    return inner\ninner = make()\n")
    assert batch["result"] == "ok", batch
    r = by_module(reloads)["f"]
    assert r["replaced"] == ["f.inner"] and r["replaced_reasons"] == {"f.inner": "free variables changed"}, r
    assert d.eval("(f.inner(), held(), f.inner is held)") == (3, 1, False)


def test_removed_class_attribute_is_gone_from_old_class(pyhotd):
    d = pyhotd({"k.py": "class K:\n    OLD = 1\n    def gone(self):\n        return 1\n    def kept(self):\n        return 1\n"})
    sub = d.subscriber()
    d.exec("import k; obj = k.K()")
    edit(d, sub, "k.py", "class K:\n    NEW = 2\n    def kept(self):\n        return 2\n")
    assert d.eval("(hasattr(k.K, 'OLD'), hasattr(obj, 'gone'), obj.kept(), obj.NEW)") == (False, False, 2, 2)


def test_identity_kept_and_old_references_run_new_code(pyhotd):
    """After a reload, references held elsewhere run the new code and classes keep their
    identity (DESIGN "Reload semantics" 6)."""
    src = ("class Greeter:\n    def hello(self):\n        return 'hello {v}'\n\n"
           "def f():\n    return '{v}'\n")
    d = pyhotd({"m.py": src.format(v=1)})
    d.exec("import m\nold_f = m.f\nold_cls = m.Greeter\ninst = m.Greeter()")
    sub = d.subscriber()
    path = d.write("m.py", src.format(v=2))
    batch, reloads = sub.wait_batch(path)
    assert batch["result"] == "ok"
    assert d.eval("m.f()") == "2"
    assert d.eval("old_f()") == "2"
    assert d.eval("m.f is old_f") is True
    assert d.eval("m.Greeter is old_cls") is True
    assert d.eval("isinstance(inst, m.Greeter)") is True
    assert d.eval("inst.hello()") == "hello 2"
    assert "m.f" in reloads[0]["patched"] or "f" in reloads[0]["patched"], reloads


# ---- 5. deadline --------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    "while True:\n    pass\n",
    "import time\ntime.sleep(10 ** 6)\n",
    "import os\nr, w = os.pipe()\nos.read(r, 1)\n",
])
def test_slow_top_level_is_interrupted_and_rolled_back(pyhotd, body):
    d = pyhotd({"slow.py": "V = 1\n"},
               config="[daemon]\nsocket = {socket}\n[watch]\nroot = {root}\n[reload]\ntimeout_ms = 1000\n")
    sub = d.subscriber()
    path = d.write("slow.py", "V = 2\n" + body)
    # The socket answers while the reload runs, and status shows the job and its age.
    with Client(d.socket) as c:
        status = wait_for(lambda: (lambda s: s if s["job"] else None)(c.call("status")),
                          what="the running reload job in status")
        assert status["job"]["kind"] == "reload" and status["job"]["age_ms"] >= 0
        t = time.monotonic()
        c.call("ping")
        assert time.monotonic() - t < 1.0 * SCALE
    batch, _ = sub.wait_batch(path, timeout=15 * SCALE)
    assert batch["result"] == "rolled_back", batch
    assert batch["error"]["type"] == "TimeoutError"
    assert d.module_value("slow", "V") == 1


# ---- 6. pending, mapping, boundaries ----------------------------------------------------------

def test_failed_module_is_retried_on_its_next_change(pyhotd):
    d = pyhotd({"m.py": "V = 1\n"})
    sub = d.subscriber()
    batch, _ = edit(d, sub, "m.py", "V = 2\nraise RuntimeError\n")
    assert batch["result"] == "rolled_back"
    batch, _ = edit(d, sub, "m.py", "V = 3\n")
    assert batch["result"] == "ok"
    assert d.module_value("m", "V") == 3


def test_package_init_and_namespace_package_map(pyhotd):
    d = pyhotd({"pkg/__init__.py": "P = 1\n", "ns/inner.py": "I = 1\n"})
    sub = d.subscriber()
    d.exec("import pkg, ns.inner")
    batch, reloads = edit(d, sub, "pkg/__init__.py", "P = 2\n")
    assert [r["module"] for r in reloads] == ["pkg"] and batch["result"] == "ok"
    batch, reloads = edit(d, sub, "ns/inner.py", "I = 2\n")
    assert [r["module"] for r in reloads] == ["ns.inner"] and batch["result"] == "ok"
    assert d.eval("(pkg.P, ns.inner.I)") == (2, 2)


def test_module_reached_through_a_symlinked_directory(pyhotd, tmp_path):
    real = tmp_path / "real_lib"
    real.mkdir()
    (real / "linked.py").write_text("L = 1\n")

    def prepare(root):
        os.symlink(str(real), os.path.join(root, "lib_link"))
    d = pyhotd({}, prepare=prepare, args=["--watch", str(real)])
    sub = d.subscriber()
    # Imported by the path through the link: the edit of the real file maps to it.
    d.exec("import sys, importlib; sys.path.insert(0, %r); import linked" % os.path.join(d.root, "lib_link"))
    path = str(real / "linked.py")
    with open(path, "w") as f:
        f.write("L = 2\n")
    batch, reloads = sub.wait_batch(path)
    assert batch["result"] == "ok" and [r["module"] for r in reloads] == ["linked"], (batch, reloads)
    assert d.module_value("linked", "L") == 2


def test_modules_outside_the_roots_are_never_reloaded(pyhotd, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "extlib.py").write_text("E = 1\n")
    d = pyhotd({"user.py": "import extlib\nU = extlib.E\n"}, args=["--python-path", str(outside)])
    sub = d.subscriber()
    (outside / "extlib.py").write_text("E = 2\n")
    reply = d.conn.request("reload", targets=["extlib"])
    assert reply["ok"] is False and reply["error"]["code"] == "not_found", reply
    assert [e for e in sub.quiet() if e["event"] == "batch"] == []
    assert d.module_value("extlib", "E") == 1


def test_deleted_file_keeps_module_loaded(pyhotd):
    d = pyhotd({"m.py": "VALUE = 1\n"})
    sub = d.subscriber()
    path = d.path("m.py")
    os.unlink(path)
    batch, reloads = sub.wait_batch(path)
    assert batch["result"] == "skipped", batch
    if reloads:
        assert reloads[0]["result"] == "skipped" and reloads[0]["module"] == "m", reloads
        assert "deleted" in reloads[0]["reason"]
    assert d.module_value("m", "VALUE") == 1
    # Recreated with new content: reloads into the same module.
    d.write("m.py", "VALUE = 2\n")
    batch, reloads = sub.wait_batch(path)
    assert batch["result"] == "ok", batch
    assert d.module_value("m", "VALUE") == 2


# ---- 6b. what counts as a change -------------------------------------------------------

def _pyc_header(path):
    pycs = glob.glob(os.path.join(os.path.dirname(path), "__pycache__", "m.*.pyc"))
    assert len(pycs) == 1, pycs
    with open(pycs[0], "rb") as f:
        _magic, flags, mtime, size = struct.unpack("<4sIII", f.read(16))
    return flags, mtime, size


def test_same_size_edit_in_same_second_runs_new_source(pyhotd):
    """The stale .pyc trap: a cached .pyc records the source's mtime in whole seconds and
    its size; an edit of the same size with the same mtime must still run the new source."""
    # The .pyc is written before the daemon starts, as a previous run would have left it
    # (the daemon writes one too unless PYTHONDONTWRITEBYTECODE is set). Paused while the
    # edit is made: the mtime is put back before the batch is taken.
    def compile_pyc(root):
        src = os.path.join(root, "m.py")
        py_compile.compile(src, cfile=importlib.util.cache_from_source(src), doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)

    d = pyhotd({"m.py": "VALUE = 1\n"}, prepare=compile_pyc,
               env={"PYTHONDONTWRITEBYTECODE": None})
    assert d.module_value("m", "VALUE") == 1
    path = d.path("m.py")
    before = os.stat(path)
    flags, pyc_mtime, pyc_size = _pyc_header(path)
    assert flags == 0 and pyc_mtime == int(before.st_mtime) and pyc_size == before.st_size, \
        "the start-up import did not leave a timestamp .pyc of m.py"
    sub = d.subscriber()

    with d.one_batch(1):
        d.write("m.py", "VALUE = 2\n")
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = os.stat(path)
        # The trap is armed: same size, same mtime as the .pyc records.
        assert (after.st_size, int(after.st_mtime)) == (pyc_size, pyc_mtime)

    batch, reloads = sub.wait_batch(path)
    assert batch["result"] == "ok", batch
    assert [(r["module"], r["result"]) for r in reloads] == [("m", "ok")]
    assert d.module_value("m", "VALUE") == 2

    # The same again by an explicit reload command (no file event involved).
    d.write("m.py", "VALUE = 3\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    result = d.conn.call("reload", targets=["m"])
    assert result["batch"]["result"] == "ok"
    assert d.module_value("m", "VALUE") == 3


@pytest.mark.parametrize("mode", ["definitions", "module"])
def test_touch_and_identical_rewrite_do_not_reload(pyhotd, mode):
    counting = ("try:\n    LOADS += 1\nexcept NameError:\n    LOADS = 1\nVALUE = {value}\n")
    d = pyhotd({"m.py": counting.format(value=1), "marker.py": "X = 1\n"}, mode=mode)
    runs = 2 if mode == "module" else 1  # the unchanged counting statement runs again?
    sub = d.subscriber()
    path = d.path("m.py")

    os.utime(path)                                   # touch
    d.write("m.py", counting.format(value=1))       # same bytes again
    time.sleep(0.05)
    d.write("m.py", counting.format(value=1))       # and again
    # A later edit of another file: everything about m.py has been handled before it.
    marker = d.write("marker.py", "X = 2\n")
    events = sub.events_until(lambda e: e["event"] == "batch" and marker in e["paths"])
    for e in events:
        if e["event"] == "reload" and e["path"] == path:
            assert e["result"] == "skipped" and e["reason"] == "content unchanged", e
        if e["event"] == "batch" and path in e["paths"]:
            assert "m" not in e["modules"], e
    assert d.module_value("m", "LOADS") == 1
    assert d.status()["reloads"]["ok"] == 1  # marker only

    # A real edit still reloads, once.
    d.write("m.py", counting.format(value=2))
    batch, reloads = sub.wait_batch(path)
    assert [(r["module"], r["result"]) for r in reloads] == [("m", "ok")]
    assert d.module_value("m", "LOADS") == runs
    # Saving that same content again is not a second reload.
    d.write("m.py", counting.format(value=2))
    for e in sub.quiet(QUIET * 2):
        assert not (e["event"] == "reload" and e["result"] == "ok"), e
    assert d.module_value("m", "LOADS") == runs and d.module_value("m", "VALUE") == 2


def test_edit_back_to_applied_content_is_skipped_after_failure(pyhotd):
    """A broken save followed by a save of the last applied content: nothing new to apply,
    the broken file is no longer pending, and the event and the log say that the module is
    back to the code that runs. The failed batch names the module it tried."""
    d = pyhotd({"m.py": "VALUE = 1\n"})
    sub = d.subscriber()
    path = d.write("m.py", "VALUE = (\n")
    batch, _ = sub.wait_batch(path)
    assert batch["result"] == "error"
    assert batch["modules"] == ["m"], batch
    assert d.status()["last_batch"]["modules"] == ["m"]
    d.write("m.py", "VALUE = 1\n")
    batch, reloads = sub.wait_batch(path)
    assert batch["result"] == "skipped", batch
    assert [(r["module"], r["result"], r.get("reverted")) for r in reloads] == \
        [("m", "skipped", True)], reloads
    assert "back to the applied code" in reloads[0]["reason"]
    assert d.module_value("m", "VALUE") == 1
    wait_for(lambda: "reload m: back to the code that runs" in d.log(), what="the log line")
    assert "INFO: reload m: back to the code that runs" in d.log()
    # Saving it again is plain "content unchanged": nothing was pending any more.
    d.write("m.py", "VALUE = 1\n")
    batch, reloads = sub.wait_batch(path)
    assert [(r["reason"], r.get("reverted")) for r in reloads] == [("content unchanged", None)]
    # Nothing left pending: an edit of another module is a batch of that file only.
    other = d.write("other.py", "Y = 1\n")
    batch, _ = sub.wait_batch(other)
    assert batch["paths"] == [other], batch


# ---- 7. state -------------------------------------------------------------------------------

def test_state_hooks_hand_state_to_the_new_version(pyhotd):
    v1 = "try:\n    sessions\nexcept NameError:\n    sessions = ['ann', 'bob']\n" \
         "def __pyhot_save__():\n    return sessions\n"
    v2 = "try:\n    sessions\nexcept NameError:\n    sessions = {}\n" \
         "def __pyhot_save__():\n    return sessions\n" \
         "def __pyhot_restore__(old):\n    global sessions\n" \
         "    if isinstance(old, list):\n        sessions = {n: {'name': n} for n in old}\n" \
         "    else:\n        sessions = old\n"
    d = pyhotd({"sessions.py": v1})
    sub = d.subscriber()
    batch, _ = edit(d, sub, "sessions.py", v2)
    assert batch["result"] == "ok", batch
    assert d.module_value("sessions", "sessions") == {"ann": {"name": "ann"}, "bob": {"name": "bob"}}
    # A restore hook that raises rolls the batch back.
    batch, _ = edit(d, sub, "sessions.py", v2 + "def __pyhot_restore__(old):\n    raise ValueError('no')\n")
    assert batch["result"] == "rolled_back"
    assert d.module_value("sessions", "sessions") == {"ann": {"name": "ann"}, "bob": {"name": "bob"}}


# ---- 8. the app ------------------------------------------------------------------------------

def test_entry_app_uses_new_code_through_held_references(pyhotd):
    app = """\
import threading, time
import worker
from worker import step   # held reference: patching makes it run the new code
try:
    RESULTS                 # app imports worker, so it is reloaded after it: keep the state
except NameError:
    RESULTS = []
    THREADS = set()

def main():
    while True:
        RESULTS.append(step())
        THREADS.add(threading.get_ident())
        time.sleep(0.01)
"""
    d = pyhotd({"app.py": app, "worker.py": "def step():\n    return 'v1'\n"}, args=["--entry", "app:main"])
    sub = d.subscriber()
    wait_for(lambda: d.eval("len(__import__('app').RESULTS)") > 0, what="the app to run")
    batch, _ = edit(d, sub, "worker.py", "def step():\n    return 'v2'\n")
    assert batch["result"] == "ok"
    wait_for(lambda: d.eval("__import__('app').RESULTS[-1]") == "v2", what="the app to run v2")
    assert d.eval("len(__import__('app').THREADS)") == 1


APP = """\
import threading
import time

import worker

try:
    RESULTS
except NameError:
    RESULTS = []
    THREADS = []


def main():
    THREADS.append(threading.get_ident())
    while True:
        RESULTS.append(worker.step())
        time.sleep(0.005)
"""


def test_entry_thread_keeps_running_across_reloads(pyhotd):
    d = pyhotd({"app.py": APP, "worker.py": "def step():\n    return 'v1'\n"},
               args=["--entry", "app:main"])
    d.exec("import app, threading")
    wait_for(lambda: d.eval("'v1' in app.RESULTS"), what="the entry thread's first step")
    assert d.eval("len(app.THREADS)") == 1
    thread = d.eval("app.THREADS[0]")
    assert d.eval("[t.ident for t in threading.enumerate() if t.ident == %d] != []" % thread) is True
    sub = d.subscriber()

    path = d.write("worker.py", "def step():\n    return 'v2'\n")
    batch, reloads = sub.wait_batch(path)
    assert batch["result"] == "ok", batch
    assert "worker" in batch["modules"]
    wait_for(lambda: d.eval("'v2' in app.RESULTS"), what="the entry thread to run the new worker.step")
    # Same thread, still alive, still appending; the results kept across the reload.
    assert d.eval("app.THREADS") == [thread]
    assert d.eval("any(t.ident == %d and t.is_alive() for t in threading.enumerate())" % thread)
    assert d.eval("app.RESULTS[0]") == "v1"
    n = d.eval("len(app.RESULTS)")
    time.sleep(0.1)
    assert d.eval("len(app.RESULTS)") > n
    assert d.eval("app.RESULTS[-1]") == "v2"


def test_entry_that_cannot_start_is_reported(pyhotd):
    """A missing entry function must not go unnoticed: pyhotd either refuses to start
    (exit 1) or keeps serving, and either way says so in its log."""
    d = pyhotd({"app.py": "X = 1\n"}, args=["--entry", "app:nope"], ready=False)
    if not d.ready_or_exited():
        d.expect_clean_exit = False
        assert d.proc.returncode == 1, d.proc.returncode
    wait_for(lambda: "app:nope" in d.log(), what="the log to name the entry app:nope")


def test_entry_that_raises_is_logged(pyhotd):
    d = pyhotd({"app.py": "def main():\n    raise RuntimeError('app died')\n"},
               args=["--entry", "app:main"])
    wait_for(lambda: "app died" in d.log(), what="the entry's exception in the log")
    assert d.conn.call("ping")["pong"] is True
