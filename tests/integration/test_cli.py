"""pyhotd's command line: help, version, usage errors, --check-config."""

import os

import pytest

from conftest import PYHOTD, run


def test_help_and_version():
    r = run([PYHOTD, "--help"])
    assert r.returncode == 0, r
    assert "--watch" in r.stdout and "--socket" in r.stdout
    r = run([PYHOTD, "--version"])
    assert r.returncode == 0, r
    assert r.stdout.startswith("pyhotd ") and "3." in r.stdout, r.stdout


def test_unknown_option_and_bad_values(tmp_path):
    for argv in (["--frobnicate"], ["--settle-ms", "nope"], ["--settle-ms", "70000"],
                 ["--entry", "no_colon"], ["--log-level", "loud"], ["--watch"],
                 ["unexpected-operand"]):
        r = run([PYHOTD] + argv, timeout=10)
        assert r.returncode == 2, (argv, r)
        assert r.stderr.strip(), argv
    r = run([PYHOTD, "--frobnicate"])
    assert "--frobnicate" in r.stderr


def test_missing_watch_dir(tmp_path):
    missing = str(tmp_path / "does-not-exist")
    r = run([PYHOTD, "--watch", missing, "--socket", str(tmp_path / "s.sock")])
    assert r.returncode == 2, r
    assert missing in r.stderr, r.stderr
    a_file = tmp_path / "file.py"
    a_file.write_text("X = 1\n")
    r = run([PYHOTD, "--watch", str(a_file), "--socket", str(tmp_path / "s.sock")])
    assert r.returncode == 2 and str(a_file) in r.stderr, r


GOOD = """\
# a comment
[daemon]
socket = {tmp}/pyhotd.sock
log_level = debug

[watch]
root = {tmp}
settle_ms = 25
import = none
include = *.py
exclude = build/*

[python]
path = {tmp}
entry = app:main

[reload]
timeout_ms = 2000
strategy = module

[run]
timeout_ms = 1000
"""


def test_check_config(tmp_path):
    good = tmp_path / "good.conf"
    good.write_text(GOOD.format(tmp=tmp_path))
    r = run([PYHOTD, "--config", str(good), "--check-config"])
    assert r.returncode == 0, r
    assert str(good) in r.stdout

    bad = tmp_path / "bad.conf"
    text = GOOD.format(tmp=tmp_path).replace("settle_ms = 25", "settle_ms = 25\nfrobnicate = 1")
    bad.write_text(text)
    line = text.splitlines().index("frobnicate = 1") + 1
    r = run([PYHOTD, "--config", str(bad), "--check-config"])
    assert r.returncode == 2, r
    assert "%s:%d:" % (bad, line) in r.stderr, r.stderr
    assert "frobnicate" in r.stderr

    for mutation, needle in (("settle_ms = 25", "settle_ms = soon"), ("import = none", "import = some"),
                             ("strategy = module", "strategy = magic"), ("[run]", "[nope]")):
        t = GOOD.format(tmp=tmp_path).replace(mutation, needle)
        bad.write_text(t)
        line = t.splitlines().index(needle) + 1
        r = run([PYHOTD, "--config", str(bad), "--check-config"])
        assert r.returncode == 2, (needle, r)
        assert "%s:%d:" % (bad, line) in r.stderr, (needle, r.stderr)

    missing = tmp_path / "missing.conf"
    r = run([PYHOTD, "--config", str(missing), "--check-config"])
    assert r.returncode == 2 and str(missing) in r.stderr, r


@pytest.mark.skipif(os.geteuid() != 0, reason="[sandbox] user is used (and checked) only by a root daemon")
def test_check_config_checks_the_sandbox_user(tmp_path):
    conf = tmp_path / "user.conf"
    for user, needle in (("no-such-user-pyhot", "no such user"), ("root", "is root")):
        conf.write_text("[sandbox]\nuser = %s\n" % user)
        r = run([PYHOTD, "--config", str(conf), "--check-config"])
        assert r.returncode == 2 and "[sandbox] user" in r.stderr and needle in r.stderr, r
    conf.write_text("[sandbox]\nuser = nobody\n")
    r = run([PYHOTD, "--config", str(conf), "--check-config"])
    assert r.returncode == 0, r


def test_check_config_checks_roots(tmp_path):
    conf = tmp_path / "roots.conf"
    conf.write_text("[watch]\nroot = %s\n" % (tmp_path / "gone"))
    r = run([PYHOTD, "--config", str(conf), "--check-config"])
    assert r.returncode == 2 and str(tmp_path / "gone") in r.stderr, r


def test_relative_paths_in_config_are_relative_to_its_directory(pyhotd, tmp_path):
    d = pyhotd({"m.py": "VALUE = 1\n"},
               config="[daemon]\nsocket = {socket}\n[watch]\nroot = app\n", cwd="/")
    # The file is d<N>/pyhotd.conf and the root d<N>/app: "app" resolved against the file.
    roots = d.status()["roots"]
    assert [(r["path"], r["state"], r["watched_by"]) for r in roots] == \
        [(d.root, "watching", "inotify")], roots
    assert d.module_value("m", "VALUE") == 1
