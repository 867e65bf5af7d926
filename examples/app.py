"""The demo app: a small HTTP server whose responses come from handlers.py.

pyhotd imports this module and runs main() on a thread of its own
(`--entry app:main`), so the server keeps serving while you edit. Each request looks
`handlers.respond` up on the module, so an edit to handlers.py is served by the very next
request; the request count in state.py survives every reload.

    make demo                      # in one terminal
    curl http://127.0.0.1:8765/    # in another; then edit handlers.py and curl again
"""
import http.server
import os

import handlers

HOST = "127.0.0.1"
PORT = int(os.environ.get("PYHOT_DEMO_PORT", "8765"))


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        status, content_type, body = handlers.respond(self.path)
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        pass  # keep the daemon's log for reloads


def main():
    try:
        server = http.server.ThreadingHTTPServer((HOST, PORT), Handler)
    except OSError as exc:
        raise OSError(f"cannot serve on {HOST}:{PORT}: {exc.strerror}; choose another port "
                      f"with PYHOT_DEMO_PORT (make demo PYHOT_DEMO_PORT=8080)") from exc
    print(f"demo app: serving http://{HOST}:{PORT}/ (edit examples/handlers.py)", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
