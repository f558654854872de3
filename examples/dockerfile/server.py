"""A tiny HTTP server on the standard library only: `/` greets, `/healthz` answers ok.

Listens on $PORT (default 8080). GREETING comes from the image's build argument.
"""

import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GREETING = os.environ.get("GREETING", "hello")
PAGE = f"{GREETING} from a Dockerfile\n"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/":
            self.reply(200, PAGE)
        elif self.path == "/healthz":
            self.reply(200, "ok\n")
        else:
            self.reply(404, "not found\n")

    def reply(self, status, text):
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    # As PID 1 in a container, SIGTERM is ignored unless handled: stop at once when asked.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"serving {PAGE.strip()!r} on port {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
