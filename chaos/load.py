"""The load generator: producer processes that place trades through the HTTP API and record every answer.

Each producer is a forked process that POSTs to ``/api/trades/`` through Django's test
client (the real URL routing, view and ``trade_place``, without a web server), paced open
loop at its share of the rate, each request with a unique ``Idempotency-Key``. One request in
twenty places several trades at once (``/api/trades/batch/``, all or none): its trades are
recorded as requests of their own, with the batch's answer and the keys ``<batch key>/<i>``
their trades carry, so the checker needs to know nothing of batches. A request
ends ok (2xx), refused (4xx), unavailable (503: nothing was written) or indeterminate (a
500 or an exception: it may have committed). A request that failed is retried with the
same key, as a well-behaved client does (a fifth of the clients never retry, so that some
requests stay indeterminate, as in Jepsen); the key is how the checker finds its trade.
"""

import json
import logging
import os
import random
import signal
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

BEANS_MAX = 100
UNKNOWN_ACCOUNT_SHARE = 0.005  # requests for an account that does not exist: refused (404)
MAX_ATTEMPTS = 5  # per request, with the same Idempotency-Key
ONE_SHOT_SHARE = 0.2  # clients that never retry: a 500 leaves them indeterminate, as in Jepsen
BATCH_SHARE = 0.05  # requests that place several trades in one transaction
BATCH_SIZES = (2, 10)


class Item(NamedTuple):
    """One planned request."""

    number: int  # its place in the plan
    key: str  # its Idempotency-Key
    account: int
    beans: int
    max_attempts: int
    # On the first trade of a batch request: how many trades it places (0 on the others).
    batch: int = 1


# Module-level functions: they run in forked producer processes.


def _producer_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and terminates us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    logging.getLogger("django.request").setLevel(logging.CRITICAL)  # 500s are recorded, not printed


def _request(client: Any, items: list[Item], deadline: float) -> tuple[str, int, str]:
    """POST one trade or one batch, retrying with the same key; return (outcome, attempts, answers)."""
    from django.db import close_old_connections

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
        close_old_connections()  # as a web server does between requests: drop a dead connection
        try:
            response = client.post(
                path, data=body, content_type="application/json", headers={"Idempotency-Key": key}
            )
            code = response.status_code
            exc_info = getattr(response, "exc_info", None)
            answers.append(f"{code}:{exc_info[0].__name__}" if code >= 500 and exc_info else str(code))
        except Exception as exc:  # noqa: BLE001 - anything at all: the request's fate is unknown
            code = 0
            answers.append(f"exception:{type(exc).__name__}")
        if code in (200, 201):
            return "ok", attempt, " ".join(answers)
        if 400 <= code < 500:
            return "refused", attempt, " ".join(answers)
        ambiguous |= code != 503  # a 503 says nothing was written; a 500 or an exception does not
        pause = min(0.2 * 2 ** (attempt - 1), 2.0)
        if attempt == item.max_attempts or time.time() + pause > deadline:
            break
        time.sleep(pause)
    return ("indeterminate" if ambiguous else "unavailable"), attempt, " ".join(answers)


def _produce(job: tuple[int, list[Item], float, float, float]) -> list[tuple[Any, ...]]:
    """Place ``items`` at ``rate`` per second from ``start_at`` (open loop); stop at ``deadline``."""
    index, items, start_at, rate, deadline = job
    os.environ["PGAPPNAME"] = f"chaos-producer-{index}"  # before this process's first connection
    from django.db import connections
    from django.test import Client

    client = Client(raise_request_exception=False)
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
    connections.close_all()
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
    items: list[Item], *, producers: int, start_at: float, rate: float, deadline: float
) -> list[tuple[int, list[Item], float, float, float]]:
    requests: list[list[Item]] = []  # a batch's trades go to one producer, together
    for item in items:
        if item.batch == 0 and requests:
            requests[-1].append(item)
        else:
            requests.append([item])
    shares = [[item for request in requests[p::producers] for item in request] for p in range(producers)]
    return [
        (p, share, start_at + p / rate, rate / producers, deadline) for p, share in enumerate(shares) if share
    ]
