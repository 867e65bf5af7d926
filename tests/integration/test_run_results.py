"""A run's results (docs/run.md, "--get"): the script's globals by name through the real
daemon, in-process and isolated, over the protocol and as pyhotctl prints them."""

import json

from conftest import write

SCRIPT = """\
import decimal, math

class Point:
    def __init__(self, x):
        self.x = x
    def __repr__(self):
        return "Point(%d)" % self.x

NONE = None
FLAG = True
COUNT = 42
RATIO = 0.25
NAME = "caf\\u00e9"
ROWS = [1, [2, 3], {"k": None}]
PAIR = (1, "two")
TABLE = {"a": (1, 2), "b": {"c": [True]}}
HUGE = 2 ** 80
NAN = math.nan
SET = {3}
INT_KEYS = {1: "a"}
PRICE = decimal.Decimal("1.10")
POINT = Point(7)
FUNC = len
LONG = set(range(30000))
WIDE = ["y" * 1024] * 2048
_PRIVATE = 1
print("ran")
"""

KINDS = {
    "NONE": None, "FLAG": True, "COUNT": 42, "RATIO": 0.25, "NAME": "caf\u00e9",
    "ROWS": [1, [2, 3], {"k": None}], "PAIR": [1, "two"],
    "TABLE": {"a": [1, 2], "b": {"c": [True]}},
    "HUGE": {"repr": "1208925819614629174706176", "type": "int"},
    "NAN": {"repr": "nan", "type": "float"},
    "SET": {"repr": "{3}", "type": "set"},
    "INT_KEYS": {"repr": "{1: 'a'}", "type": "dict"},
    "PRICE": {"repr": "Decimal('1.10')", "type": "decimal.Decimal"},
    "POINT": {"repr": "Point(7)", "type": "__main__.Point"},
    "FUNC": {"repr": "<built-in function len>", "type": "builtin_function_or_method"},
}


def run_request(d, path, get, **extra):
    """The run command over the protocol: (stream lines, final response)."""
    c = d.client()
    request_id = c.send("run", path=path, get=get, **extra)
    streamed = []
    while True:
        message = c.read_message()
        assert message.get("id") == request_id, message
        if "stream" in message:
            streamed.append(message)
            continue
        return streamed, message


def check_kinds(result):
    values = result["globals"]
    for name, expected in KINDS.items():
        assert values[name] == expected, (name, values[name])
    long = values["LONG"]
    assert long["type"] == "set" and long["truncated"] is True
    assert len(long["repr"]) == 64 * 1024 and long["repr"].startswith("{0, 1, 2, ")
    wide = values["WIDE"]     # its JSON is over 1 MiB: the repr instead
    assert wide["type"] == "list" and wide["truncated"] is True and len(wide["repr"]) == 64 * 1024
    assert result["missing"] == ["NOPE", "_MISSING"]


def test_get_each_kind_of_value_in_process_and_isolated(pyhotd, tmp_path):
    d = pyhotd()
    script = write(tmp_path / "kinds.py", SCRIPT)
    names = list(KINDS) + ["LONG", "WIDE", "NOPE", "_MISSING", "COUNT"]
    for isolate in (False, True):
        streamed, reply = run_request(d, script, names, isolate=isolate)
        assert reply["ok"] is True, reply
        result = reply["result"]
        assert (result["exit_code"], result["isolated"]) == (0, isolate)
        assert [m["data"] for m in streamed] == ["ran\n"]
        check_kinds(result)
        assert list(result["globals"])[:3] == ["NONE", "FLAG", "COUNT"]    # the order asked


def test_get_star_is_every_public_json_global(pyhotd, tmp_path):
    d = pyhotd()
    script = write(tmp_path / "star.py", "import os\nB = 2\nA = [1]\n_C = 3\ndef f(): pass\n"
                   "D = {1: 2}\nE = 'e'\n")
    for isolate in (False, True):
        _, reply = run_request(d, script, ["*"], isolate=isolate)
        result = reply["result"]
        assert list(result["globals"].items()) == [("B", 2), ("A", [1]), ("E", "e")], result
        assert result["missing"] == []
        _, reply = run_request(d, script, ["*", "D", "f"], isolate=isolate)
        values = reply["result"]["globals"]
        assert values["D"] == {"repr": "{1: 2}", "type": "dict"}
        assert values["f"]["type"] == "function"


def test_get_after_an_exception_or_exit_and_without_a_script_value(pyhotd, tmp_path):
    d = pyhotd()
    raising = write(tmp_path / "raising.py", "DONE = 1\nraise ValueError('x')\nLATER = 2\n")
    exiting = write(tmp_path / "exiting.py", "import sys\nDONE = 'yes'\nsys.exit(3)\n")
    for isolate in (False, True):
        _, reply = run_request(d, raising, ["DONE", "LATER"], isolate=isolate)
        result = reply["result"]
        assert result["exit_code"] == 1
        assert (result["globals"], result["missing"]) == ({"DONE": 1}, ["LATER"])
        _, reply = run_request(d, exiting, ["DONE"], isolate=isolate)
        assert (reply["result"]["exit_code"], reply["result"]["globals"]) == (3, {"DONE": "yes"})
    # Without "get", the result has neither member.
    _, reply = run_request(d, exiting, [])
    assert "globals" not in reply["result"] and "missing" not in reply["result"]


def test_isolated_child_killed_sends_nothing(pyhotd, tmp_path):
    d = pyhotd()
    script = write(tmp_path / "killed.py", "import os, signal\nX = 1\nos.kill(os.getpid(), signal.SIGKILL)\n")
    _, reply = run_request(d, script, ["X"], isolate=True)
    result = reply["result"]
    assert result["signal"] == 9
    assert (result["globals"], result["missing"]) == ({}, ["X"])


def test_bad_get_argument(pyhotd, tmp_path):
    d = pyhotd()
    script = write(tmp_path / "s.py", "X = 1\n")
    for bad in ([1], [""], ["X"] * 1001, {"X": 1}):
        reply = d.conn.request("run", path=script, get=bad)
        assert reply["ok"] is False and reply["error"]["code"] == "bad_argument", (bad, reply)
    assert d.alive()


def test_pyhotctl_prints_values_after_the_output(pyhotd, pyhotctl, tmp_path):
    d = pyhotd()
    script = write(tmp_path / "p.py", "import fractions\nprint('out')\nTOTAL = 42\n"
                   "ROWS = (1, 'a')\nF = fractions.Fraction(1, 3)\n")
    r = pyhotctl("run", "--get", "TOTAL", "--get", "ROWS", "--get", "F", "--get", "NOPE",
                 script, socket=d.socket)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ('out\nTOTAL = 42\nROWS = [1,"a"]\n'
                        'F = Fraction(1, 3)    (fractions.Fraction)\n'), r.stdout
    assert r.stderr == "pyhotctl: run: NOPE: not set by the script\n", r.stderr

    r = pyhotctl("--json", "run", "--get", "TOTAL", "--get", "NOPE", "--isolate", script,
                 socket=d.socket)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert lines[0]["stream"] == "stdout" and lines[0]["data"] == "out\n"
    result = lines[-1]["result"]
    assert (result["globals"], result["missing"], result["isolated"]) == ({"TOTAL": 42}, ["NOPE"], True)
