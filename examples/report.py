"""Run me in the warm interpreter while `make demo` runs:

    build/bin/pyhotctl run examples/report.py

A run shares the daemon's loaded modules (docs/run.md): `state` and `handlers` here are
the very modules the app serves from, so this prints the live request count and the
greeting of the code running now, without an HTTP request and without importing anything
afresh. Only a run executes main(): imported (exec, or [watch] import = all), it defines it.
"""
import handlers
import state


def main():
    print(f"requests served so far: {state.requests}")
    print(f"greeting now: {handlers.GREETING!r}")


if __name__ == "__main__":
    main()
