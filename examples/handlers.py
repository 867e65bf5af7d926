"""Edit me while `make demo` runs: the next request is answered by the new code.

Try changing GREETING, or the text in respond(), then `curl http://127.0.0.1:8765/`.
A syntax error is reported in the daemon's log (and by `pyhotctl tail`) while the old code
keeps answering; fix it and the edit applies.
"""
import state

GREETING = "Hello from pyhot"


def respond(path):
    state.requests += 1
    if path == "/health":
        return 200, "text/plain; charset=utf-8", "ok\n"
    body = f"{GREETING}! path={path} requests_served={state.requests}\n"
    return 200, "text/plain; charset=utf-8", body
