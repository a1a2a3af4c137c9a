"""Issue 15: mutation fuzz of both sides of the proxy, and a randomized shared-pool test,
each against `remora proxy` and the real Envoy 1.40 (same bootstrap, same recording
backend: desync_harness).

* Client side: well-formed seed requests (bodies that carry a request of their own, upgrade
  requests with bodies, hop-by-hop nominations) mutated byte- and token-wise. What the
  backend receives through each proxy must always be well-formed HTTP/1.1 whose framing
  matches its head (the backend parses every byte), and remora must forward nothing that
  Envoy does not: each request (method, target, body) the backend sees through remora it
  also sees through Envoy.
* Backend side: seed responses mutated the same way (extra responses, bodies after
  204/304, broken framing). After each, a new client's request must get its own response,
  promptly, never a byte of the mutated one.
* Randomized shared pool: many clients, each request randomly well-formed or answered by
  a misbehaving backend; every client must receive exactly the response to its own request.

Bounded: REMORA_DESYNC_FUZZ (default 200) mutations per side, seeded by
REMORA_DESYNC_SEED (default 15), so a failure can be replayed; a few seconds per proxy.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.unit.proxy.http import desync_harness as dh

COUNT = int(os.environ.get("REMORA_DESYNC_FUZZ", "200"))
SEED = int(os.environ.get("REMORA_DESYNC_SEED", "15"))
WORKERS = 6
KINDS = [pytest.param("remora"), pytest.param("envoy", marks=pytest.mark.envoy)]

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"  # only ever inside a body
PIPELINED = b"GET /pipelined HTTP/1.1\r\nHost: a\r\n\r\n"
REQUEST_SEEDS = [
    b"POST /ok-cl HTTP/1.1\r\nHost: a\r\nContent-Length: 35\r\n\r\n" + SMUGGLED,
    b"POST /ok-ch HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n23\r\n" + SMUGGLED
    + b"\r\n0\r\n\r\n",
    b"POST /ok-conn HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x-a\r\nx-a: 1\r\n"
    b"Content-Length: 35\r\n\r\n" + SMUGGLED,
    b"GET /ok-trailer HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
    b"X-Trailer: 1\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Content-Length: 5\r\n\r\nhello" + SMUGGLED,
    b"GET /ok-pipe HTTP/1.1\r\nHost: a\r\n\r\nGET /ok-pipe2 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET http://b.example/ok-abs HTTP/1.1\r\nHost: a\r\n\r\n",
]
RESPONSE_SEEDS = [
    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\netag: x\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
]
POISON_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n" + dh.POISON
TOKENS = [b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b",", b"0", b"\x00", b"chunked",
          b"Transfer-Encoding: chunked\r\n", b"Content-Length: 3\r\n", b"Connection: ",
          b"Upgrade: websocket\r\n", b"\r\n\r\n", b"HTTP/1.1", b"Host: b\r\n",
          b"content-length", b"xchunked", b"\r\n ", b"#", b"?", b"%00", b"ff\r\n"]
REPLACEMENTS = [(b"chunked", b"xchunked"), (b"chunked", b"chunked, chunked"),
                (b"chunked", b"Chunked "), (b"Content-Length", b"Connection: Content-Length"
                                            b"\r\nContent-Length"),
                (b"Content-Length: 35", b"Content-Length: 34"),
                (b"Content-Length: 35", b"Content-Length: 035"),
                (b"Content-Length: 35", b"Content-Length: 35\r\nContent-Length: 36"),
                (b"\r\n", b"\n"), (b"HTTP/1.1", b"HTTP/1.0"), (b"Host: a", b"Host: a b"),
                (b"content-length: 5", b"content-length: 15"),
                (b"content-length: 5", b"transfer-encoding: chunked"),
                (b"200 OK", b"101 Switching"), (b"23\r\n", b"24\r\n")]


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One to three random edits of DATA."""
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(6)
        i = rng.randrange(len(data) + 1)
        if op == 0:
            data = data[:i] + rng.choice(TOKENS) + data[i:]
        elif op == 1 and data:
            j = min(len(data), i + rng.randint(1, 8))
            data = data[:i] + data[j:]
        elif op == 2 and data:
            i = min(i, len(data) - 1)
            data = data[:i] + bytes([rng.randrange(256)]) + data[i + 1:]
        elif op == 3 and data:
            j = min(len(data), i + rng.randint(1, 40))
            data = data[:j] + data[i:j] + data[j:]
        elif op == 4:
            old, new = rng.choice(REPLACEMENTS)
            data = data.replace(old, new, 1)
        else:
            data = data + rng.choice([POISON_RESPONSE, PIPELINED, b"\r\n", b"0\r\n\r\n"])
    return data


def cases(kind: str, seeds: list[bytes]) -> list[bytes]:
    rng = random.Random(f"{SEED}-{kind}")
    return [mutate(rng, rng.choice(seeds)) for _ in range(COUNT)]


@pytest.fixture(scope="module", params=KINDS)
def target(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[dh.Target]:
    kind = str(request.param)
    with dh.proxy_target(kind, tmp_path_factory.mktemp(f"fuzz-{kind}")) as t:
        yield t
        assert t.alive(), f"{kind} exited during the fuzz"


def _parallel(jobs: list[Callable[[], None]]) -> None:
    with ThreadPoolExecutor(WORKERS) as pool:
        for f in [pool.submit(j) for j in jobs]:
            f.result()


# -- client side ----------------------------------------------------------------------------
Forwarded = tuple[str, str, bytes]  # method, target, body as the backend parsed them


def forwarded(t: dh.Target) -> set[Forwarded]:
    """What the backend received, Upgrade requests left out: Envoy 1.40 forwards an
    Upgrade request's head with its content-length and then holds the body until a 101,
    so the head announces bytes that never come and the backend never completes it;
    remora forwards the head without content-length (test_desync.py), which the backend
    does see."""
    return {(s.method, s.target, s.body) for s in t.backend.requests()
            if not any(n == "upgrade" for n, _ in s.headers)}


def send_all(t: dh.Target, requests: list[bytes]) -> None:
    _parallel([lambda r=r: dh.exchange(t.port, r, wait=0.3, until_responses=0)
               for r in requests])


def test_fuzzed_requests_reach_the_backend_well_framed(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """remora alone (the differential test below holds Envoy to the same)."""
    with dh.proxy_target("remora", tmp_path_factory.mktemp("fuzzrq")) as t:
        send_all(t, cases("requests", REQUEST_SEEDS))
        assert t.alive(), "remora exited during the fuzz"
        # what the proxy sent upstream is HTTP/1.1 the backend could parse, framed as its
        # head says (an unframed or mis-framed body shows up as a parse error here)
        assert t.backend.errors == [], t.backend.errors[:5]


@pytest.mark.envoy
def test_fuzzed_requests_remora_forwards_nothing_envoy_refuses(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Each request (method, target, body) the backend sees through remora it also sees
    through Envoy. Compared as sets over the whole run (with requests in flight in
    parallel, which of two pipelined requests a proxy reaches before an error is a race,
    Envoy's too); a difference is then replayed one mutation at a time, and only one that
    reproduces counts."""
    requests = cases("requests", REQUEST_SEEDS)
    work = tmp_path_factory.mktemp("fuzz-diff")
    with dh.proxy_target("envoy", work / "envoy") as envoy, \
            dh.proxy_target("remora", work / "remora") as remora:
        send_all(envoy, requests)
        send_all(remora, requests)
        for t in (envoy, remora):  # well-framed upstream, both
            assert t.backend.errors == [], (t.kind, t.backend.errors[:5])
        extra = forwarded(remora) - forwarded(envoy)
        confirmed: list[tuple[bytes, set[Forwarded]]] = []
        for _method, target, body in sorted(extra):
            tail = target.rsplit("/", 1)[-1][:12].encode()
            for r in (r for r in requests if tail in r and body[:16] in r):
                seen = {}
                for t in (envoy, remora):
                    t.backend.reset()
                    dh.exchange(t.port, r, wait=0.5, until_responses=0)
                    seen[t.kind] = forwarded(t)
                if seen["remora"] - seen["envoy"]:
                    confirmed.append((r, seen["remora"] - seen["envoy"]))
        assert envoy.alive() and remora.alive()
    assert confirmed == [], f"forwarded by remora, not by Envoy: {confirmed[:3]}"


# -- backend side ---------------------------------------------------------------------------
def envoy_known_defect(response: bytes) -> bool:
    """Responses Envoy 1.40 is known to get wrong, left out of its run (remora's run keeps
    them): an unrequested 101 leaves the next request on that connection unanswered (issue
    15 item 3, test_desync.py); a status code that is not three digits (``2000``, ``1``)
    is relayed as ``HTTP/1.1 2000 Unknown``, and after ``1`` whatever follows is relayed
    as its body. remora answers 502 to both."""
    for line in response.split(b"\r\n"):
        if line[:7] == b"HTTP/1." and line[8:9] == b" ":
            code = line[9:].split(b" ")[0]
            if code == b"101" or not (len(code) == 3 and code.isdigit()):
                return True
    return False


def test_fuzzed_responses_never_reach_another_client(target: dh.Target) -> None:
    responses = [r for r in cases("responses", RESPONSE_SEEDS)
                 if not (target.kind == "envoy" and envoy_known_defect(r))]
    for i, r in enumerate(responses):
        target.backend.scripted[str(i)] = r
    bad: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        a = dh.exchange(target.port, f"GET /fuzzresp/{i} HTTP/1.1\r\nHost: a\r\n\r\n"
                        .encode(), wait=0.4, until_responses=1)
        # one request, at most one response, and nothing after it (a second response in
        # the same read is neither relayed nor merged into the first)
        if dh.response_starts(a.data) not in (0, 1):
            with lock:
                bad.append(f"{responses[i]!r} -> first client got {a.data[:300]!r}")
        tag = f"/ok-after-{i}"
        nxt = dh.exchange(target.port, f"GET {tag} HTTP/1.1\r\nHost: a\r\n\r\n".encode(),
                          wait=3.0, until_responses=1)
        if nxt.responses != [(200, dh.ok_body(tag))] or dh.POISON in nxt.data:
            with lock:
                bad.append(f"{responses[i]!r} -> {nxt.data[:200]!r}")

    _parallel([lambda i=i: one(i) for i in range(len(responses))])
    assert bad == [], f"{len(bad)} of {len(responses)}: {bad[:3]}"


# -- randomized shared pool ---------------------------------------------------------------
# The misbehaviour arrives with the response (one write), so it is the response's and no
# one else's. Not mixed in: an unsolicited response sent *later* (/extra-late, the late
# body of /head-late). Once the pool has handed that connection to the next request, such
# bytes are indistinguishable from that request's response, for any HTTP/1.1 proxy (Envoy
# too); while it is idle they close it (test_desync.py covers them one at a time).
MISBEHAVING = {
    # path: (method, statuses the client may get for its own request)
    "/extra-same": ("GET", {200}), "/head-body": ("HEAD", {200}),
    "/204-body": ("GET", {204}), "/304-body": ("GET", {304}), "/garbage": ("GET", {502}),
    "/xchunked": ("GET", {502}), "/status099": ("GET", {502}), "/bighdr": ("GET", {502}),
    "/101": ("GET", {101}),
}


def test_random_mix_on_a_shared_pool_every_client_gets_its_own(target: dh.Target) -> None:
    rng = random.Random(f"{SEED}-mix")
    clients, per_client = 16, max(8, COUNT // 5)
    paths = [p for p in MISBEHAVING
             # Envoy's known defect (issue 15 item 3): its next request would hang
             if not (target.kind == "envoy" and p == "/101")]
    plans = [[rng.choice(paths) if rng.random() < 0.4 else f"/ok-c{c}-{i}"
              for i in range(per_client)] for c in range(clients)]
    bad: list[str] = []
    lock = threading.Lock()

    def client(plan: list[str]) -> None:
        for path in plan:
            method, statuses = MISBEHAVING.get(path, ("GET", {200}))
            a = dh.exchange(target.port, f"{method} {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode(),
                            wait=3.0, head=method == "HEAD", until_responses=1)
            if path.startswith("/ok-"):
                good = a.responses == [(200, dh.ok_body(path))]
            else:
                good = (len(a.responses) == 1 and a.status in statuses
                        and dh.POISON not in a.data and b"ok /ok-c" not in a.data)
            if not good:
                with lock:
                    bad.append(f"{path}: {a.data[:200]!r}")

    threads = [threading.Thread(target=client, args=(p,)) for p in plans]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert bad == [], f"{len(bad)} wrong answers: {bad[:5]}"
    assert target.backend.errors == []
