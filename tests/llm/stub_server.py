"""What the tests' stand-in HTTP servers share: a threaded server on loopback that logs nothing and prints "ready"
once it listens."""
import http.server


class QuietHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(port, handler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    print("ready", flush=True)
    server.serve_forever()
