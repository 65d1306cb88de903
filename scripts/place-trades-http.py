"""Place trades through the HTTP API as a well-behaved client does: the demo's client.

One ``POST /api/trades/`` per trade, ``--parallel`` in flight, each named by its own
``Idempotency-Key`` (``<key-prefix>-<n>``). The API's contract says what to do with each answer:

* ``201`` (placed) and ``200`` (the same key again: the first trade) are done;
* ``429`` (this key's rate limit) and ``503`` (nothing was written: the database, the id
  generator or a degraded pipeline) are repeated, with the same key, after ``Retry-After``
  (delta-seconds or an HTTP date; 1 s when it is missing);
* a transport error (a refused connection, a time-out: the request may or may not have been
  applied) is repeated with the same key too, which is what makes a repeat safe;
* anything else (a ``400``, ``401``, ``404``, ``409``, a ``500``) is final and reported.

Every repeat stops at ``--deadline-s`` after the start. The client counts what it repeated and
why, prints one summary line, and exits 0 only when every trade was placed.

    API_KEY=... python scripts/place-trades-http.py --api http://127.0.0.1:8000/api \\
        --first-account 1 --accounts 20 --trades 1000 --beans 100 --key-prefix demo-1

The key is read from the environment (``API_KEY``), not the command line, which ``ps`` shows.
"""

from __future__ import annotations

import argparse
import email.utils
import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

RETRY_STATUSES = frozenset({429, 503})
PLACED_STATUSES = frozenset({200, 201})
DEFAULT_RETRY_AFTER_S = 1.0
TRANSPORT_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)


def retry_after_s(value: str | None, *, now: float | None = None) -> float:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return DEFAULT_RETRY_AFTER_S
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return DEFAULT_RETRY_AFTER_S
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass
class Tally:
    """What the client saw, counted across its threads."""

    answers: Counter[str] = field(default_factory=Counter)  # final answer per trade: "201", "error"...
    retried: Counter[str] = field(default_factory=Counter)  # repeats by cause: "429", "503", "transport"
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, outcome: str, failure: str | None = None) -> int:
        with self.lock:
            self.answers[outcome] += 1
            if failure is not None:
                self.failures.append(failure)
            return sum(self.answers.values())

    def retry(self, cause: str) -> None:
        with self.lock:
            self.retried[cause] += 1

    @property
    def placed(self) -> int:
        return sum(self.answers[str(status)] for status in PLACED_STATUSES)

    def summary(self) -> str:
        answers = ", ".join(f"{count} x {name}" for name, count in sorted(self.answers.items()))
        causes = ", ".join(f"{cause}: {count}" for cause, count in sorted(self.retried.items())) or "none"
        return (
            f"answers: {answers}; limited (429): {self.retried['429']}, "
            f"retried: {sum(self.retried.values())} ({causes})"
        )


@dataclass
class TradeClient:
    """Places trade ``n`` until it is placed, refused for good, or the deadline passes."""

    client: httpx.Client
    url: str
    key_prefix: str
    deadline: float  # time.monotonic()
    tally: Tally
    sleep: Callable[[float], None] = time.sleep

    def place(self, n: int, body: dict[str, int]) -> str:
        """Place one trade; return its final answer (an HTTP status, or "deadline"/"transport")."""
        headers = {"Idempotency-Key": f"{self.key_prefix}-{n}"}
        transport_failures = 0
        while True:
            try:
                response = self.client.post(self.url, json=body, headers=headers)
            except httpx.TransportError as exc:
                # Applied or not, we cannot tell: only a repeat with the same key can find out.
                delay = TRANSPORT_BACKOFF_S[min(transport_failures, len(TRANSPORT_BACKOFF_S) - 1)]
                transport_failures += 1
                if not self._wait(delay, "transport"):
                    return self._final("transport", f"trade {n}: {type(exc).__name__}: {exc}")
                continue
            status = response.status_code
            if status in PLACED_STATUSES:
                return self._final(str(status))
            if status in RETRY_STATUSES:
                # Wait at least what the server asked, plus a little, so that the clients it
                # limited in the same second do not all come back in the same instant.
                delay = retry_after_s(response.headers.get("Retry-After")) + random.uniform(0, 0.1)  # noqa: S311
                if not self._wait(delay, str(status)):
                    return self._final("deadline", f"trade {n}: still {status} at the deadline")
                continue
            return self._final(str(status), f"trade {n}: HTTP {status} {response.text[:200]}")

    def _wait(self, delay: float, cause: str) -> bool:
        """Sleep ``delay`` and count a repeat for ``cause``; False when that would pass the deadline."""
        if time.monotonic() + delay > self.deadline:
            return False
        self.tally.retry(cause)
        self.sleep(delay)
        return True

    def _final(self, outcome: str, failure: str | None = None) -> str:
        self.tally.answer(outcome, failure)
        return outcome


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api", required=True, help="the API's base URL, e.g. http://127.0.0.1:8000/api")
    parser.add_argument("--first-account", type=int, required=True)
    parser.add_argument("--accounts", type=int, required=True, help="trades go round-robin over this many")
    parser.add_argument("--trades", type=int, required=True, help="the last trade's number")
    parser.add_argument("--start", type=int, default=1, help="the first trade's number (default 1)")
    parser.add_argument("--beans", type=int, required=True)
    parser.add_argument("--key-prefix", required=True, help="Idempotency-Key of trade n: <prefix>-<n>")
    parser.add_argument("--parallel", type=int, default=8, help="requests in flight (default 8)")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="one request's time-out (default 30)")
    parser.add_argument("--deadline-s", type=float, default=600.0, help="stop repeating after (default 600)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    api_key = os.environ.get("API_KEY", "")
    if not api_key:
        sys.stderr.write("place-trades-http: set API_KEY in the environment\n")
        return 2
    numbers = range(args.start, args.trades + 1)
    total = len(numbers)
    tally = Tally()
    started = time.monotonic()
    limits = httpx.Limits(max_connections=args.parallel, max_keepalive_connections=args.parallel)
    with httpx.Client(
        headers={"Authorization": f"Bearer {api_key}"}, timeout=args.timeout_s, limits=limits
    ) as client:
        trades = TradeClient(
            client=client,
            url=f"{args.api.rstrip('/')}/trades/",
            key_prefix=args.key_prefix,
            deadline=started + args.deadline_s,
            tally=tally,
        )

        def place(n: int) -> None:
            account = args.first_account + (n - 1) % args.accounts
            trades.place(n, {"account": account, "beans": args.beans})
            answered = sum(tally.answers.values())
            if answered % 50 == 0 or answered == total:
                sys.stdout.write(f"\r  {answered}/{total} answered")
                sys.stdout.flush()

        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            list(pool.map(place, numbers))
    sys.stdout.write(f"\n{tally.summary()}, in {time.monotonic() - started:.0f}s\n")
    for failure in tally.failures[:10]:
        sys.stderr.write(f"place-trades-http: {failure}\n")
    if tally.placed != total:
        sys.stderr.write(f"place-trades-http: {total - tally.placed} of {total} trades were not placed\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
