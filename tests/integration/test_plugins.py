"""Plugin directories (docs/plugins.md): the real daemon loads plugin_*.py files of a
directory with runpy.run_path, the host's API injected; edits, broken edits, new and
removed files, a plugin that hangs; `pyhot.plugins`, `pyhot.on_plugin`, the `plugins`
command, `plugin` events and `pyhotctl plugins`."""

import json
import os

from conftest import write

HOST = """\
API = {"greeting": "hello", "loaded": []}
"""

PLUGIN_A = """\
import json
loaded.append("a")
def hello(who):
    return "%s %s from a" % (greeting, who)
VALUE = 1
_private = 2
"""

PLUGIN_B = """\
loaded.append("b")
def twice(x):
    return 2 * x
"""


def start(pyhotd, plugins, extra_config="", host=HOST):
    """A daemon whose root holds host.py (the api) and whose plugin directory (beside the
    root) holds plugins (file name -> source). Returns (daemon, plugin dir, subscriber
    that has seen every event from the start)."""
    def prepare(root):
        directory = os.path.join(os.path.dirname(root), "plugins")
        os.mkdir(directory)
        for name, text in plugins.items():
            write(os.path.join(directory, name), text)
    d = pyhotd(modules={"host.py": host}, prepare=prepare, config=(
        "[daemon]\nsocket = {socket}\n[watch]\nroot = {root}\nimport = none\n"
        "[plugins]\ndir = plugins\napi = host:API\n" + extra_config))
    directory = os.path.realpath(os.path.join(d.base, "plugins"))
    c = d.client()
    c.call("subscribe", history=1000)
    return d, directory, c


def plugin_event(c, name, result=None):
    return c.next_event(lambda e: e["event"] == "plugin" and e["name"] == name and
                        (result is None or e["result"] == result))


def test_load_in_name_order_with_the_api_injected(pyhotd):
    d, directory, c = start(pyhotd, {"plugin_b.py": PLUGIN_B, "plugin_a.py": PLUGIN_A,
                                     "helper.py": "raise SystemExit('not a plugin')\n"})
    a = plugin_event(c, "plugin_a", "loaded")
    b = plugin_event(c, "plugin_b", "loaded")
    assert a["path"] == os.path.join(directory, "plugin_a.py")
    assert a["duration_ms"] > 0 and "error" not in a
    assert a["seq"] < b["seq"]
    assert d.eval("__import__('host').API['loaded']") == ["a", "b"]
    assert d.eval("sorted(__import__('pyhot').plugins)") == ["plugin_a", "plugin_b"]
    # Public top-level names only: not _private, not the module it imported, not the
    # injected globals it left alone.
    assert d.eval("sorted(__import__('pyhot').plugins['plugin_a'])") == ["VALUE", "hello"]
    assert d.eval("__import__('pyhot').plugins['plugin_a']['hello']('you')") == "hello you from a"
    assert d.eval("__import__('pyhot').plugins['plugin_b']['twice'](21)") == 42
    # Read-only, both levels.
    for code in ("__import__('pyhot').plugins['x'] = 1",
                 "__import__('pyhot').plugins['plugin_a']['VALUE'] = 2"):
        reply = d.conn.request("exec", code=code)
        assert reply["ok"] is False and reply["error"]["type"] == "TypeError", reply
    assert [e for e in c.quiet() if e["event"] == "plugin"] == []


def test_an_edit_runs_again_in_a_fresh_namespace(pyhotd):
    d, directory, c = start(pyhotd, {"plugin_a.py": PLUGIN_A})
    plugin_event(c, "plugin_a", "loaded")
    d.exec("import pyhot; old = pyhot.plugins['plugin_a']")
    write(os.path.join(directory, "plugin_a.py"),
          "def hello(who):\n    return 'v2 ' + greeting + ' ' + who\n")
    event = plugin_event(c, "plugin_a", "reloaded")
    assert event["duration_ms"] > 0
    assert d.eval("pyhot.plugins['plugin_a']['hello']('x')") == "v2 hello x"
    assert d.eval("sorted(pyhot.plugins['plugin_a'])") == ["hello"]     # VALUE is gone
    assert d.eval("sorted(old)") == ["VALUE", "hello"]     # swapped whole, not mutated
    assert d.eval("__import__('host').API['loaded']") == ["a"]
    # Saving the same content again does nothing.
    write(os.path.join(directory, "plugin_a.py"),
          "def hello(who):\n    return 'v2 ' + greeting + ' ' + who\n")
    assert [e for e in c.quiet() if e["event"] == "plugin"] == []


def test_a_broken_edit_keeps_the_previous_exports(pyhotd):
    d, directory, c = start(pyhotd, {"plugin_a.py": PLUGIN_A})
    plugin_event(c, "plugin_a", "loaded")
    path = os.path.join(directory, "plugin_a.py")
    d.exec("import pyhot; before = pyhot.plugins['plugin_a']")

    write(path, "def hello(who):\n    return (\n")
    error = plugin_event(c, "plugin_a", "error")["error"]
    assert error["type"] == "SyntaxError" and error["file"] == path and error["line"] == 2

    write(path, "X = 1\n\ndef f():\n    raise RuntimeError('boom')\n\nf()\n")
    error = plugin_event(c, "plugin_a", "error")["error"]
    assert error["type"] == "RuntimeError" and error["message"] == "boom"
    assert error["file"] == path and error["line"] == 4
    assert 'plugin_a.py", line 6' in error["traceback"]
    assert "runpy" not in error["traceback"] and "<pyhot>" not in error["traceback"]

    write(path, "import sys\nY = 2\nsys.exit(3)\n")
    error = plugin_event(c, "plugin_a", "error")["error"]
    assert error["type"] == "SystemExit" and "sys.exit(3)" in error["message"]
    assert d.alive()

    assert d.eval("pyhot.plugins['plugin_a'] is before") is True
    assert d.eval("pyhot.plugins['plugin_a']['hello']('z')") == "hello z from a"
    listed = d.conn.call("plugins")["plugins"]
    assert [(p["name"], p["state"], p["exports"]) for p in listed] == \
        [("plugin_a", "error", ["VALUE", "hello"])]
    assert listed[0]["error"]["type"] == "SystemExit"

    write(path, "Z = 3\n")
    plugin_event(c, "plugin_a", "reloaded")
    listed = d.conn.call("plugins")["plugins"]
    assert (listed[0]["state"], listed[0]["exports"], listed[0]["error"]) == ("loaded", ["Z"], None)


def test_a_new_file_is_loaded_and_a_removed_one_unloaded(pyhotd):
    d, directory, c = start(pyhotd, {"plugin_a.py": PLUGIN_A})
    plugin_event(c, "plugin_a", "loaded")
    write(os.path.join(directory, "plugin_c.py"), "C = [1, 2]\n")
    write(os.path.join(directory, "notes.py"), "N = 1\n")     # does not match the pattern
    assert plugin_event(c, "plugin_c", "loaded")["path"] == os.path.join(directory, "plugin_c.py")
    assert d.eval("dict(__import__('pyhot').plugins['plugin_c'])") == {"C": [1, 2]}
    d.exec("import pyhot\nseen = []\n"
           "def on_plugin(event):\n"
           "    seen.append((event['name'], event['result'], event['exports'] is None))\n"
           "pyhot.on_plugin(on_plugin)\npyhot.on_plugin(on_plugin)\n")
    os.unlink(os.path.join(directory, "plugin_c.py"))
    event = plugin_event(c, "plugin_c", "removed")
    assert "error" not in event
    assert d.eval("sorted(pyhot.plugins)") == ["plugin_a"]
    assert d.eval("seen") == [("plugin_c", "removed", True)]      # registered once
    assert [p["name"] for p in d.conn.call("plugins")["plugins"]] == ["plugin_a"]
    assert not [e for e in c.quiet() if e["event"] == "plugin" and e["name"] == "notes"]


def test_a_plugin_that_hangs_is_interrupted_and_the_others_keep_their_state(pyhotd):
    d, directory, c = start(pyhotd, {
        "plugin_a.py": PLUGIN_A,
        "plugin_hang.py": "while True:\n    pass\n",
        "plugin_z.py": "Z = 26\n",
    }, extra_config="[reload]\ntimeout_ms = 300\n")
    plugin_event(c, "plugin_a", "loaded")
    error = plugin_event(c, "plugin_hang", "error")["error"]
    assert error["type"] == "TimeoutError"
    assert error["file"] == os.path.join(directory, "plugin_hang.py") and error["line"] in (1, 2)
    plugin_event(c, "plugin_z", "loaded")      # after the hang, with a deadline of its own
    assert d.eval("sorted(__import__('pyhot').plugins)") == ["plugin_a", "plugin_z"]

    write(os.path.join(directory, "plugin_a.py"), "import time\nwhile True:\n    time.sleep(0.05)\n")
    assert plugin_event(c, "plugin_a", "error")["error"]["type"] == "TimeoutError"
    assert d.eval("pyhot.plugins['plugin_a']['VALUE']",
                  setup="import pyhot") == 1
    assert d.status()["ready"] is True


def test_plugin_directory_from_the_command_line_and_pyhotctl_plugins(pyhotd, pyhotctl, tmp_path):
    directory = tmp_path / "cli-plugins"
    directory.mkdir()
    write(str(directory / "plugin_one.py"), "def f():\n    return 1\nN = 2\n")
    write(str(directory / "plugin_two.py"), "raise ValueError('bad two')\n")
    d = pyhotd(args=["--plugins", str(directory)])
    c = d.client()
    c.call("subscribe", history=1000)
    plugin_event(c, "plugin_one", "loaded")
    plugin_event(c, "plugin_two", "error")

    table = pyhotctl("plugins", socket=d.socket)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "STATE", "LOADED", "EXPORTS"]
    assert lines[1].split()[:2] == ["plugin_one", "loaded"] and lines[1].endswith("N, f")
    assert lines[2].split()[:2] == ["plugin_two", "error"]
    assert "ValueError: bad two" in table.stdout

    listed = json.loads(pyhotctl("--json", "plugins", socket=d.socket).stdout)["result"]
    assert listed["dirs"] == [os.path.realpath(str(directory))]
    assert listed["pattern"] == "plugin_*.py"
    one, two = listed["plugins"]
    assert (one["name"], one["state"], one["exports"], one["error"]) == \
        ("plugin_one", "loaded", ["N", "f"], None)
    assert one["path"] == os.path.realpath(str(directory / "plugin_one.py"))
    assert one["loaded_at"].endswith("Z") and len(one["loaded_at"]) == 24
    assert (two["state"], two["loaded_at"], two["error"]["message"]) == ("error", None, "bad two")


def test_no_plugin_directories(pyhotd, pyhotctl):
    d = pyhotd()
    assert d.conn.call("plugins") == {"plugins": [], "dirs": [], "pattern": "plugin_*.py",
                                      "api": None}
    out = pyhotctl("plugins", socket=d.socket)
    assert out.returncode == 0 and "no plugins" in out.stdout


def test_the_api_is_looked_up_at_each_load_and_its_failure_is_the_plugins(pyhotd):
    d, directory, c = start(pyhotd, {"plugin_a.py": "G = greeting\n"},
                            host="import os\nAPI = {'greeting': os.environ.get('NOPE', 'hi')}\n")
    plugin_event(c, "plugin_a", "loaded")
    d.exec("import host; host.API = ['not', 'a', 'dict']")
    write(os.path.join(directory, "plugin_a.py"), "G = 2\n")
    error = plugin_event(c, "plugin_a", "error")["error"]
    assert error["type"] == "TypeError" and "host:API is a list" in error["message"]
    d.exec("host.API = {'greeting': 'again'}")
    write(os.path.join(directory, "plugin_a.py"), "G = greeting * 2\n")
    plugin_event(c, "plugin_a", "reloaded")
    assert d.eval("__import__('pyhot').plugins['plugin_a']['G']") == "againagain"


def test_config_errors_name_the_file_and_line(tmp_path):
    from conftest import PYHOTD, run
    conf = tmp_path / "bad.conf"
    conf.write_text("[plugins]\npattern = plugin_*.py\napi = nocolon\n")
    out = run([PYHOTD, "--config", str(conf), "--check-config"])
    assert out.returncode == 2
    assert "%s:3: api: expected MODULE:ATTR, got 'nocolon'" % conf in out.stderr
    out = run([PYHOTD, "--plugins", str(tmp_path / "missing"), "--check-config"])
    assert out.returncode == 2 and "--plugins %s: No such file or directory" % (tmp_path / "missing") in out.stderr
