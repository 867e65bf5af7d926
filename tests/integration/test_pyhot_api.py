"""The public in-daemon module `pyhot` (docs/reload.md, "Your own registries"), through the
real pyhotd: importable from exec, run and the entry; hooks as decorators, one per
definition, a raising hook rolling the batch back, on_rollback undoing what a hook did."""

from conftest import wait_for

REGISTRY = """\
import pyhot

MENU = []


@pyhot.after_reload
def rebuild(info):
    MENU.append((info.batch, list(info.modules), info.mode))
"""


def test_import_pyhot_from_exec_run_and_entry(pyhotd, pyhotctl, tmp_path):
    d = pyhotd({"app.py": "import pyhot\nSEEN = []\ndef main():\n    SEEN.append(pyhot.after_reload.__name__)\n"},
               args=["--entry", "app:main"])
    wait_for(lambda: d.eval("__import__('app').SEEN") == ["after_reload"], what="the entry")
    assert d.eval("__import__('pyhot').__all__") == ["BatchInfo", "after_reload", "before_reload",
                                                     "on_plugin", "plugins", "remove_hook"]
    script = tmp_path / "script.py"
    script.write_text("import pyhot\nprint(pyhot.BatchInfo.__name__)\n")
    result = pyhotctl("run", str(script), socket=d.socket)
    assert result.returncode == 0, result
    assert result.stdout == "BatchInfo\n"


def test_after_reload_hook_runs_once_per_definition(pyhotd):
    d = pyhotd({"registry.py": REGISTRY, "m.py": "X = 1\n"})
    sub = d.subscriber()
    d.exec("import registry, m")
    batch, _ = sub.wait_batch(d.write("m.py", "X = 2\n"))
    assert batch["result"] == "ok", batch
    assert d.eval("__import__('registry').MENU") == [(batch["batch"], ["m"], "definitions")]
    # The registration runs again (its statement changed): still one hook.
    batch2, _ = sub.wait_batch(d.write("registry.py", REGISTRY.replace(
        "MENU.append((info.batch, list(info.modules), info.mode))",
        "MENU.append(('v2', info.batch))")))
    assert batch2["result"] == "ok", batch2
    batch3, _ = sub.wait_batch(d.write("m.py", "X = 3\n"))
    assert d.eval("[e for e in __import__('registry').MENU if e[1] == %d]" % batch3["batch"]) == \
        [("v2", batch3["batch"])]
    assert d.eval("len(__import__('_pyhot_reload')._hooks['after'])") == \
        d.eval("len(__import__('pyhot')._hooks['after'])")


def test_raising_hook_rolls_back_and_on_rollback_undoes(pyhotd):
    d = pyhotd({"m.py": "X = 1\n"})
    sub = d.subscriber()
    d.exec("import m, pyhot\nUNDONE = []\n"
           "def veto(info):\n"
           "    info.on_rollback(lambda: UNDONE.append(info.batch))\n"
           "    if m.X == 99:\n"
           "        raise ValueError('X must not be 99')\n"
           "assert pyhot.after_reload(veto) is veto\n")
    batch, _ = sub.wait_batch(d.write("m.py", "X = 99\n"))
    assert batch["result"] == "rolled_back", batch
    assert "X must not be 99" in batch["error"]["message"]
    assert d.eval("m.X") == 1
    assert d.eval("UNDONE") == [batch["batch"]]
    batch, _ = sub.wait_batch(d.write("m.py", "X = 2\n"))
    assert batch["result"] == "ok", batch
    assert d.eval("(m.X, len(UNDONE))") == (2, 1)
    assert d.eval("pyhot.remove_hook(veto)") is True
    assert d.eval("pyhot.remove_hook(veto)") is False
    batch, _ = sub.wait_batch(d.write("m.py", "X = 99\n"))
    assert batch["result"] == "ok", batch


def test_adapters_import_no_framework(pyhotd):
    d = pyhotd({"m.py": "X = 1\n"})
    sub = d.subscriber()
    d.exec("import m")
    sub.wait_batch(d.write("m.py", "X = 2\n"))
    loaded = d.eval("sorted(n for n in __import__('sys').modules if n.split('.')[0] in "
                    "('flask', 'fastapi', 'django', 'aiohttp', 'sqlalchemy', 'starlette'))")
    assert loaded == []
