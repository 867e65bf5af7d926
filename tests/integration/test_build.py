"""What a newcomer runs first, the Makefile: `make deps` installs every program the suite
and the README's tour run (a skip on a fresh machine is a missing install step), and
reading the Makefile runs nothing (before `make deps`, python3 may not be there yet)."""

import importlib.util
import os
import shutil

from conftest import REPO, run

# Programs the suite or the tour runs, and who runs them.
TOOLS = {
    "vim": "tests/integration/test_watch_editors.py (an editor's saves)",
    "setpriv": "tests/integration/test_control_security.py (a peer of another uid)",
    "systemd-analyze": "tests/integration/test_service.py (make verify-units)",
    "inotifywait": "tests/bench (the peer of the watcher benches)",
    "curl": "README.md's tour",
}


# Python packages the daemon imports in the reload and adapter tests (Debian's python3-*).
MODULES = ["flask", "fastapi", "uvicorn", "django", "aiohttp", "sqlalchemy", "click", "numpy"]


def _owner(path):
    r = run(["dpkg-query", "--search", os.path.realpath(path)])
    assert r.returncode == 0, r.stderr
    return r.stdout.split(":")[0]


def _make(*args):
    return run(["make", "-C", REPO, "--no-print-directory"] + list(args), timeout=60)


def _deb_packages():
    r = _make("-s", "--eval", "print-deb-packages: ; @echo $(DEB_PACKAGES)", "print-deb-packages")
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


def test_reading_the_makefile_runs_nothing():
    r = _make("-n", "test", "PYTHON=/nonexistent/python3")
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", "reading the Makefile ran something:\n" + r.stderr


def test_make_deps_installs_what_the_suite_and_the_tour_run():
    packages = _deb_packages()
    for tool, user in TOOLS.items():
        path = shutil.which(tool)
        assert path, "%s (run by %s) is not installed" % (tool, user)
        owner = _owner(path)
        assert owner in packages, "%s (package %s, run by %s) is not in DEB_PACKAGES" % (
            tool, owner, user)
    for name in MODULES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin, "%s is not installed" % name
        owner = _owner(spec.origin)
        assert owner in packages, "%s (package %s) is not in DEB_PACKAGES" % (name, owner)
