"""The demo app of `cargo xtask run`: requests that hold Python's GIL, like a real Django view.

Most requests take a couple of milliseconds of pure-Python work; one in twenty takes fifty. With
uWSGI's shared socket, requests pile up inside the few processes epoll keeps waking while the
others idle; reuselb sends each new connection to the process with the fewest in flight.

`?ms=N` asks for N milliseconds exactly.
"""
import os
import random
import time
from urllib.parse import parse_qs


def burn(ms):
    """Busy loop in Python bytecode: the GIL is held the whole time."""
    end = time.perf_counter() + ms / 1000.0
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


def application(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if "ms" in query:
        ms = float(query["ms"][0])
    else:
        ms = 50.0 if random.random() < 0.05 else 2.0
    burn(ms)
    body = f"pid {os.getpid()} worked {ms:g} ms\n".encode()
    headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), ("Connection", "close")]
    start_response("200 OK", headers)
    return [body]
