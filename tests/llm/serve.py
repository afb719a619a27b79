"""llama.cpp's own server (PyPI xllamacpp) on a loopback port with a small real model, for the fleet's tests.

usage: serve.py GGUF [SLOTS [CONTEXT [MAX_TOKENS]]]   — prints "ready PORT" once /health answers, serves until stdin closes
or it is killed. The server binds a loopback port of its own choosing (port 0), so no other process can take it
first. SLOTS requests run at once (default 8), sharing CONTEXT tokens (default 4096); MAX_TOKENS caps what any
one request generates (default: no cap but the context).
"""
import os
import sys
import time
import urllib.request

import xllamacpp


def listening_ports():
    """The TCP ports this process listens on: its sockets' inodes, found in /proc/net/tcp in state LISTEN."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = []
    with open("/proc/self/net/tcp") as table:
        for row in list(table)[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:
                ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def main():
    gguf = sys.argv[1]
    slots = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    context = int(sys.argv[3]) if len(sys.argv) > 3 else 4096
    max_tokens = int(sys.argv[4]) if len(sys.argv) > 4 else -1
    p = xllamacpp.CommonParams()
    p.model.path = gguf
    p.hostnames = ["127.0.0.1"]
    p.port = 0
    p.n_ctx = context
    p.n_parallel = slots
    p.n_predict = max_tokens
    p.cpuparams.n_threads = 2
    p.cpuparams_batch.n_threads = 2
    p.model_alias = {"smollm2"}
    server = xllamacpp.Server(p)
    [port] = listening_ports()
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.05)
    print(f"ready {port}", flush=True)
    # The server lives as long as `server`: hold it until the test closes our stdin.
    sys.stdin.read()
    del server


if __name__ == "__main__":
    main()
