"""A real HTTP server on 127.0.0.1 for download tests (tests/test_hub.py, tests/test_download.py,
tests/test_tinyimagenet.py), and the URL of a port nothing listens on. Never the internet."""

from __future__ import annotations

import http.server
import socket
import threading
import time

import numpy as np


class Server:
    """A real HTTP server on 127.0.0.1. routes: path -> (body, mode, pause); mode "ok", "truncate" (announces the
    whole length, sends half, closes), "slow" (eight pieces, `pause` s apart) or "stall" (one piece, then silence).
    `hits`: requests per path. `default_body` is what `serve` sends when given no body."""

    def __init__(self, default_body: bytes = b""):
        self.routes, self.hits, self.default_body = {}, {}, default_body
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                if self.path not in server.routes:
                    self.send_error(404, "Not Found")
                    return
                body, mode, pause = server.routes[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "ok":
                    self.wfile.write(body)
                elif mode == "truncate":
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                else:
                    pieces = np.array_split(np.frombuffer(body, np.uint8), 8)
                    for p in pieces if mode == "slow" else pieces[:1]:
                        self.wfile.write(p.tobytes())
                        self.wfile.flush()
                        time.sleep(pause)
                    if mode == "stall":
                        time.sleep(30)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def serve(self, path, body=None, mode="ok", pause=0.05):
        self.routes[path] = (self.default_body if body is None else body, mode, pause)
        return self.base + path

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port_url(path="/x.npz"):
    """An http URL on 127.0.0.1 where nothing listens: the connection is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"
