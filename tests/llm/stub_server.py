"""What the tests' stand-in HTTP servers share: a threaded server on a loopback port of its own choosing, that
logs nothing and prints "ready PORT" once it listens (so no other process can take the port first)."""
import http.server


class QuietHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(handler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    print(f"ready {server.server_address[1]}", flush=True)
    server.serve_forever()
