"""The load generator: producer processes that place trades through the HTTP API and record every answer.

Each producer is a forked process that POSTs to ``/api/trades/`` with the run's API key
(``Authorization: Bearer``), paced open loop at its share of the rate, each request with a
unique ``Idempotency-Key``; either through the real web tier (``Target.url``: gunicorn,
``harness.web.Gunicorn``), over one keep-alive ``http.client`` connection per producer with a
timeout, or through Django's test client in process (the real URL routing, API and
``trade_place``, without a web server). One request in twenty places several trades at once
(``/api/trades/batch/``, all or none): its trades are recorded as requests of their own, with
the batch's answer and the keys ``<batch key>/<i>`` their trades carry, so the checker needs to
know nothing of batches. A request ends ok (2xx), refused (4xx), unavailable (503, or a
connection that could not be opened: nothing was written) or indeterminate (a 500; in process
an exception; over HTTP a timeout, or a connection that broke once the request was on its way:
it may have committed). A failed request is retried with the same key, as a well-behaved
client does (a fifth of the clients never retry, so that some requests stay indeterminate, as
in Jepsen); the key is how the checker finds its trade.
"""

import http.client
import json
import logging
import os
import random
import signal
import time
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit

BEANS_MAX = 100
UNKNOWN_ACCOUNT_SHARE = 0.005  # requests for an account that does not exist: refused (404)
MAX_ATTEMPTS = 5  # per request, with the same Idempotency-Key
ONE_SHOT_SHARE = 0.2  # clients that never retry: a 500 leaves them indeterminate, as in Jepsen
BATCH_SHARE = 0.05  # requests that place several trades in one transaction
BATCH_SIZES = (2, 10)
HTTP_TIMEOUT_S = 10.0  # per connect, send and read: less than gunicorn's worker timeout (30 s)
NOT_SENT = -1  # the connection could not be opened: the request never left, as a 503 nothing was written


class Item(NamedTuple):
    """One planned request."""

    number: int  # its place in the plan
    key: str  # its Idempotency-Key
    account: int
    beans: int
    max_attempts: int
    # On the first trade of a batch request: how many trades it places (0 on the others).
    batch: int = 1


@dataclass(frozen=True)
class Target:
    """Where the producers send their requests, and with which API key."""

    api_key: str = ""
    url: str = ""  # the web tier, http://127.0.0.1:<port>; empty: Django's test client, in process
    timeout_s: float = HTTP_TIMEOUT_S  # over HTTP only


class Client(Protocol):
    """How a producer sends its requests: ``InProcessClient`` or ``HttpClient``."""

    def post(self, path: str, body: str, key: str) -> tuple[int, str]:
        """POST ``body`` with Idempotency-Key ``key``; return the HTTP status (0 when the request's
        fate is unknown, ``NOT_SENT`` when it never left) and the answer as the history records it."""
        ...

    def close(self) -> None: ...


class InProcessClient:
    """Django's test client: the real URL routing, API and ``trade_place``, without a web server."""

    def __init__(self, target: Target) -> None:
        from django.test import Client as DjangoClient

        self.client = DjangoClient(
            raise_request_exception=False, headers={"Authorization": f"Bearer {target.api_key}"}
        )

    def post(self, path: str, body: str, key: str) -> tuple[int, str]:
        from django.db import close_old_connections

        close_old_connections()  # as a web server does between requests: drop a dead connection
        try:
            response = self.client.post(
                path, data=body, content_type="application/json", headers={"Idempotency-Key": key}
            )
        except Exception as exc:  # noqa: BLE001 - anything at all: the request's fate is unknown
            return 0, f"exception:{type(exc).__name__}"
        code = response.status_code
        exc_info = getattr(response, "exc_info", None)
        return code, f"{code}:{exc_info[0].__name__}" if code >= 500 and exc_info else str(code)

    def close(self) -> None:
        from django.db import connections

        connections.close_all()


class HttpClient:
    """The web tier over one keep-alive connection (``http.client``), opened again once it closed."""

    def __init__(self, target: Target) -> None:
        parts = urlsplit(target.url)
        self.connection = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port or 80, timeout=target.timeout_s
        )
        self.headers = {"Authorization": f"Bearer {target.api_key}", "Content-Type": "application/json"}

    def post(self, path: str, body: str, key: str) -> tuple[int, str]:
        connection = self.connection
        if connection.sock is None:  # the first request, or the last answer closed it
            try:
                connection.connect()
            except OSError as exc:  # refused, or no answer to SYN: nothing was sent
                connection.close()
                return NOT_SENT, f"unreachable:{type(exc).__name__}"
        try:
            connection.request(
                "POST", path, body=body.encode(), headers={**self.headers, "Idempotency-Key": key}
            )
            response = connection.getresponse()
            response.read()
        except Exception as exc:  # noqa: BLE001 - a timeout or a broken connection: it may have committed
            connection.close()
            return 0, f"exception:{type(exc).__name__}"
        if response.will_close:
            connection.close()
        return response.status, str(response.status)

    def close(self) -> None:
        self.connection.close()


# Module-level functions: they run in forked producer processes.


def _producer_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and terminates us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    logging.getLogger("django.request").setLevel(logging.CRITICAL)  # 500s are recorded, not printed


def _request(client: Client, items: list[Item], deadline: float) -> tuple[str, int, str]:
    """POST one trade or one batch, retrying with the same key; return (outcome, attempts, answers)."""
    item = items[0]
    if len(items) == 1:
        path, key = "/api/trades/", item.key
        body = json.dumps({"account": item.account, "beans": item.beans})
    else:
        path, key = "/api/trades/batch/", item.key.rsplit("/", 1)[0]
        body = json.dumps({"trades": [{"account": one.account, "beans": one.beans} for one in items]})
    ambiguous = False
    answers: list[str] = []
    attempt = 0
    for attempt in range(1, item.max_attempts + 1):
        code, answer = client.post(path, body, key)
        answers.append(answer)
        if code in (200, 201):
            return "ok", attempt, " ".join(answers)
        if 400 <= code < 500:
            return "refused", attempt, " ".join(answers)
        # A 503 says nothing was written, and so does a connection never opened; a 500, a
        # timeout or an exception does not.
        ambiguous |= code not in (503, NOT_SENT)
        pause = min(0.2 * 2 ** (attempt - 1), 2.0)
        if attempt == item.max_attempts or time.time() + pause > deadline:
            break
        time.sleep(pause)
    return ("indeterminate" if ambiguous else "unavailable"), attempt, " ".join(answers)


Job = tuple[int, list[Item], float, float, float, Target]


def _produce(job: Job) -> list[tuple[Any, ...]]:
    """Place ``items`` at ``rate`` per second from ``start_at`` (open loop); stop at ``deadline``."""
    index, items, start_at, rate, deadline, target = job
    os.environ["PGAPPNAME"] = f"chaos-producer-{index}"  # before this process's first connection
    client: Client = HttpClient(target) if target.url else InProcessClient(target)
    results: list[tuple[Any, ...]] = []
    i = 0
    while i < len(items):
        request = items[i : i + max(items[i].batch, 1)]
        sleep_for = start_at + i / rate - time.time()  # a batch takes the slots of its trades
        if sleep_for > 0:
            time.sleep(min(sleep_for, max(deadline - time.time(), 0)))
        answer = (
            ("not_attempted", 0, "deadline")
            if time.time() >= deadline
            else _request(client, request, deadline)
        )
        results.extend((item.number, *answer) for item in request)
        i += len(request)
    client.close()
    return results


@dataclass
class LoadPlan:
    items: list[Item]
    phase: list[str]


def load_plan(*, seed: int, load: int, probe: int, accounts: list[int]) -> LoadPlan:
    """Every request of the run, drawn from the seed (a stream of its own, apart from the schedule's)."""
    rng = random.Random(f"load-{seed}")  # noqa: S311 - reproducible load, not cryptography
    unknown = max(accounts) + 1000
    items: list[Item] = []
    while len(items) < load + probe:
        first = len(items)
        phase_end = load if first < load else load + probe  # a batch stays within its phase
        size = min(rng.randint(*BATCH_SIZES), phase_end - first) if rng.random() < BATCH_SHARE else 1
        attempts = 1 if rng.random() < ONE_SHOT_SHARE else MAX_ATTEMPTS
        for j in range(size):
            account = unknown if rng.random() < UNKNOWN_ACCOUNT_SHARE else rng.choice(accounts)
            key = f"chaos-{seed}-{first}" + (f"/{j}" if size > 1 else "")
            items.append(
                Item(first + j, key, account, rng.randint(1, BEANS_MAX), attempts, size if j == 0 else 0)
            )
    return LoadPlan(items=items, phase=["load"] * load + ["probe"] * probe)


def producer_jobs(
    items: list[Item],
    *,
    producers: int,
    start_at: float,
    rate: float,
    deadline: float,
    target: Target | None = None,
) -> list[Job]:
    requests: list[list[Item]] = []  # a batch's trades go to one producer, together
    for item in items:
        if item.batch == 0 and requests:
            requests[-1].append(item)
        else:
            requests.append([item])
    shares = [[item for request in requests[p::producers] for item in request] for p in range(producers)]
    return [
        (p, share, start_at + p / rate, rate / producers, deadline, target or Target())
        for p, share in enumerate(shares)
        if share
    ]
