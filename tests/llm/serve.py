"""llama.cpp's own server (PyPI xllamacpp) on a loopback port with a small real model, for the fleet's tests.

usage: serve.py GGUF PORT [SLOTS [CONTEXT]]   — prints "ready" once /health answers, serves until stdin closes
or it is killed. SLOTS requests run at once (default 8), sharing CONTEXT tokens (default 4096).
"""
import sys
import time
import urllib.request

import xllamacpp


def main():
    gguf, port = sys.argv[1], int(sys.argv[2])
    slots = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    context = int(sys.argv[4]) if len(sys.argv) > 4 else 4096
    p = xllamacpp.CommonParams()
    p.model.path = gguf
    p.hostnames = ["127.0.0.1"]
    p.port = port
    p.n_ctx = context
    p.n_parallel = slots
    p.cpuparams.n_threads = 2
    p.cpuparams_batch.n_threads = 2
    p.model_alias = {"smollm2"}
    server = xllamacpp.Server(p)
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.05)
    print("ready", flush=True)
    # The server lives as long as `server`: hold it until the test closes our stdin.
    sys.stdin.read()
    del server


if __name__ == "__main__":
    main()
