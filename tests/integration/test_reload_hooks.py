"""Batch hooks of the reload engine (`_pyhot_reload.add_hook`, what `pyhot.before_reload` and
`pyhot.after_reload` delegate to), through the real pyhotd: when they run, what BatchInfo
says, and that a raising hook or a rollback after it undoes the batch, on_rollback included."""


def edit(d, sub, rel, text):
    path = d.write(rel, text)
    return sub.wait_batch(path)


HOOKS = """
import _pyhot_reload, sys
seen = []
def before(info):
    m = sys.modules['m']
    seen.append(('before', info.batch, info.paths, info.modules, info.mode, m.VALUE,
                 list(info.patched)))
def after(info):
    m = sys.modules['m']
    seen.append(('after', info.modules, m.VALUE, list(info.patched), list(info.added),
                 list(info.removed)))
_pyhot_reload.add_hook('before', before)
_pyhot_reload.add_hook('after', after)
"""


def test_before_hook_sees_old_code_after_hook_the_new(pyhotd):
    d = pyhotd({"m.py": "VALUE = 1\ndef f():\n    return 1\n"})
    sub = d.subscriber()
    d.exec("import m")
    d.exec(HOOKS)
    batch, _ = edit(d, sub, "m.py", "VALUE = 2\ndef f():\n    return 2\n")
    assert batch["result"] == "ok", batch
    seen = d.eval("seen")
    assert len(seen) == 2, seen
    before, after = seen
    assert before[0] == "before" and before[1] == batch["batch"]
    assert before[2] == tuple(batch["paths"]) and before[3] == ("m",)
    assert before[4] in ("definitions", "module") and before[5] == 1 and before[6] == []
    assert after[0] == "after" and after[1] == ("m",) and after[2] == 2
    assert "m.f" in after[3], after


def test_removed_hook_no_longer_runs(pyhotd):
    d = pyhotd({"m.py": "VALUE = 1\n"})
    sub = d.subscriber()
    d.exec("import m")
    d.exec(HOOKS)
    d.exec("_pyhot_reload.remove_hook('before', before)")
    edit(d, sub, "m.py", "VALUE = 2\n")
    assert [s[0] for s in d.eval("seen")] == ["after"]
    d.exec("""
errors = []
for call in (lambda: _pyhot_reload.remove_hook('before', before),
             lambda: _pyhot_reload.add_hook('during', before),
             lambda: _pyhot_reload.add_hook('after', 42)):
    try:
        call()
    except Exception as exc:
        errors.append(type(exc).__name__)
""")
    assert d.eval("errors") == ["ValueError", "ValueError", "TypeError"]


def test_raising_after_hook_rolls_back_and_runs_on_rollback_in_reverse(pyhotd):
    d = pyhotd({"m.py": "VALUE = 1\ndef f():\n    return 1\n"})
    sub = d.subscriber()
    d.exec("import m; held = m.f")
    d.exec("""
import _pyhot_reload
undone = []
def before(info):
    info.on_rollback(lambda: undone.append('first'))
    info.on_rollback(lambda: undone.append('second'))
def after(info):
    raise RuntimeError('adapter says no')
_pyhot_reload.add_hook('before', before)
_pyhot_reload.add_hook('after', after)
""")
    batch, reloads = edit(d, sub, "m.py", "VALUE = 2\ndef f():\n    return 2\nADDED = 3\n")
    assert batch["result"] == "rolled_back", batch
    error = batch["error"]
    assert error["type"] == "RuntimeError" and error["message"] == "adapter says no"
    assert error["file"].startswith("<pyhot-exec-") and error["line"] == 8, error
    assert "adapter says no" in error["traceback"]
    assert [r["result"] for r in reloads] == ["rolled_back"]
    assert d.eval("(m.VALUE, m.f(), held(), hasattr(m, 'ADDED'))") == (1, 1, 1, False)
    assert d.eval("undone") == ["second", "first"]
    # The file stays pending: once the hook is gone, the next batch applies it.
    d.exec("_pyhot_reload.remove_hook('after', after)")
    batch, _ = edit(d, sub, "m.py", "VALUE = 2\ndef f():\n    return 2\nADDED = 4\n")
    assert batch["result"] == "ok", batch
    assert d.eval("(m.VALUE, m.f(), held(), m.ADDED)") == (2, 2, 2, 4)


def test_raising_before_hook_runs_no_module_code(pyhotd):
    d = pyhotd({"m.py": "COUNT = []\n"})
    sub = d.subscriber()
    d.exec("import m")
    d.exec("""
import _pyhot_reload
def before(info):
    raise ValueError('not now')
_pyhot_reload.add_hook('before', before)
""")
    batch, reloads = edit(d, sub, "m.py", "COUNT = []\nCOUNT.append(1)\nimport sys\nsys.ran = 1\n")
    assert batch["result"] == "rolled_back" and batch["error"]["type"] == "ValueError", batch
    assert [r["result"] for r in reloads] == ["skipped"]
    assert d.eval("(m.COUNT, hasattr(__import__('sys'), 'ran'))") == ([], False)
