"""A model server that is busy at first: answers 429 (with Retry-After) to its first N requests, then passes
requests on to a real one. Records each request's Authorization header, so a test can check the key was sent.

usage: flaky.py UPSTREAM_BASE FAILURES RETRY_AFTER LOG   — prints "ready PORT" once listening.
"""
import http.client
import sys
import urllib.parse

from stub_server import QuietHandler, serve


def main():
    upstream, failures, retry_after, log = (
        urllib.parse.urlsplit(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
    seen = {"requests": 0}

    class Handler(QuietHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen["requests"] += 1
            with open(log, "a") as f:
                f.write(f"{self.headers.get('Authorization', '')}\n")
            if seen["requests"] <= failures:
                answer = b'{"error":{"code":429,"message":"busy, try again"}}'
                self.send_response(429)
                self.send_header("Retry-After", retry_after)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                return
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=120)
            conn.request("POST", self.path, body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            self.send_response(response.status)
            self.send_header("Content-Type", response.getheader("Content-Type", "text/event-stream"))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    serve(Handler)


if __name__ == "__main__":
    main()
