"""A hostile "model server" for the fleet's tests: answers every chat completion with a 200 event stream that is
one endless line (`endless-line`), lines that are not JSON (`not-json`), or valid tokens without end (`forever`).

usage: hostile_model.py MODE   — prints "ready PORT" once listening.
"""
import json
import sys

from stub_server import QuietHandler, serve


def main():
    mode = sys.argv[1]
    token = "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": "flood " * 50}}]}) + "\n\n"

    class Handler(QuietHandler):
        protocol_version = "HTTP/1.0"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            try:
                if mode == "not-json":
                    self.wfile.write(b"data: <html>this is not an event</html>\n\n")
                    self.wfile.flush()
                    return
                chunk = (b"x" * 65536) if mode == "endless-line" else token.encode()
                while True:
                    self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass

    serve(Handler)


if __name__ == "__main__":
    main()
