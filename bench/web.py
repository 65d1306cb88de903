"""The web tier and the load generator the HTTP legs share (the exactly-once one and the alternatives)."""

import argparse
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import cpu
from bench.common import (
    BEANS,
    BENCH_SETTINGS,
    POLL_S,
    REDIS_URL,
    REPO,
    RUN_DIR,
    Children,
    bench_env,
    check_alive,
    log,
)
from bench.httpload import LoadResult, LoadSpec
from harness.processes import Child
from harness.web import Gunicorn

# Requests a second the bench's API key may send: far above anything two cores serve.
HTTP_RATE_LIMIT_PER_S = 1_000_000
# Requests of each HTTP leg unless --http-trades says otherwise: the web tier answers a few
# hundred a second here, and there are four HTTP legs per repeat.
HTTP_TRADES_DEFAULT_MAX = 1500


def http_client(choice: str) -> tuple[str | None, str]:
    """The load generator to use: (the path of wrk, or None for the Python client; its name)."""
    from bench.httpload import wrk_ensure, wrk_version

    if choice == "python":
        return None, "python"
    wrk = wrk_ensure()
    if wrk is None:
        if choice == "wrk":
            raise RuntimeError("wrk is not installed and cannot be (apt-get install wrk, as root)")
        log("wrk is not installed and cannot be: the HTTP leg uses the Python load generator")
        return None, "python"
    return wrk, wrk_version(wrk)


def http_load(
    children: Children,
    wrk: str | None,
    spec: LoadSpec,
    name: str,
    *,
    watch: list[Child],
    on_poll: Callable[[], None] = lambda: None,
) -> tuple[LoadResult, float, int]:
    """Run the load generator (``name``.log) until its result appears; raise if it has none.

    Return the result, the CPU seconds the generator used, read before it exits (a CPU
    snapshot taken after the run would miss an exited process), and its pid (the process
    group the CPU attribution names "load generator").
    """
    from bench.httpload import python_argv, result_read, wrk_argv, wrk_errors

    for stale in (spec.result_path, Path(f"{spec.result_path}.wrk")):
        stale.unlink(missing_ok=True)
    secret = RUN_DIR / f"{name}.{'lua' if wrk else 'spec.json'}"  # holds the API key
    argv = wrk_argv(wrk, spec, secret) if wrk else python_argv(spec, secret)
    child = children.start(name, argv)
    try:
        deadline = time.monotonic() + spec.timeout_s + 30
        while not spec.result_path.exists() and child.alive():
            check_alive(watch)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: no result within {spec.timeout_s:.0f}s:\n{child.tail()}")
            on_poll()
            time.sleep(POLL_S)
        cpu_s = cpu.process_seconds(child.pid)
        # wrk sleeps out its --duration unless interrupted; its script counted the requests.
        # Again until it exits: the first signal may reach the wrk thread that is stopping.
        for _ in range(50):
            if not child.alive():
                break
            if wrk:
                child.signal(signal.SIGINT)
            child.wait(0.2)
    finally:
        children.stop(child)
        secret.unlink(missing_ok=True)
    errors = wrk_errors(spec) if wrk else {}
    if not spec.result_path.exists():
        raise RuntimeError(f"{name} ended without a result (socket errors {errors}):\n{child.tail()}")
    result = result_read(spec.result_path)
    result.errors.update(errors)
    return result, cpu_s if result.cpu_s is None else result.cpu_s, child.pid


def http_checked(result: LoadResult, expected: int, web: Gunicorn, what: str) -> None:
    """Fail loudly on a missing answer, a socket error or any answer but 201."""
    if result.requests != expected or result.non_201 or result.errors or result.unmatched:
        raise RuntimeError(
            f"{what}: {result.requests} of {expected} requests answered, statuses {result.statuses} "
            f"({result.non_201} not 201), client errors {result.errors}; web tier log "
            f"{web.child.log_path.relative_to(REPO)}:\n{web.child.tail(30)}"
        )


def request_figures(result: LoadResult) -> dict[str, Any]:
    """What the client saw of a measured load: its answers and their latency, in ms.

    The fields the HTTP legs' records (``Http``, ``Alternative``) share.
    """
    return {
        "requests": result.requests,
        "statuses": result.statuses,
        "non_201": result.non_201,
        "request_per_s": result.per_s,
        "request_p50_ms": result.percentile(0.5),
        "request_p99_ms": result.percentile(0.99),
        "request_max_ms": max(result.latencies_ms, default=0.0),
    }


@dataclass
class WebServer:
    """The web tier a repeat's HTTP legs share, and the bench's API key for it."""

    web: Gunicorn
    key: str
    client_id: int  # the key's ApiKey id, which trades record as client_id


def web_start(args: argparse.Namespace, children: Children, tag: str) -> WebServer:
    """Start the web tier as operators run it, with ``bench.settings``, and make an API key.

    ``harness.web.Gunicorn``: gunicorn with ``project/gunicorn.conf.py``, ``--http-workers`` x
    ``--http-threads``. Its processes connect to PostgreSQL as ``bench-gunicorn``.
    """
    from edge.models import ApiKey

    # The developer's WEB_*, API_* and GUNICORN_* settings stay out; the rate limit counts in the
    # bench's Redis database. No control socket: gunicorn's default path ($HOME/.gunicorn/gunicorn.ctl)
    # is one per user, and a second master takes it over from (and at exit deletes it under) the
    # developer's own gunicorn.
    web_env = {
        key: value for key, value in bench_env().items() if not key.startswith(("WEB_", "API_", "GUNICORN_"))
    }
    web_env.update(
        PGAPPNAME="bench-gunicorn",
        API_RATE_LIMIT_REDIS_URL=REDIS_URL,
        GUNICORN_CMD_ARGS="--no-control-socket",
        **BENCH_SETTINGS,
    )
    web = Gunicorn(
        web_env,
        log_path=RUN_DIR / f"web-{tag}.log",
        workers=args.http_workers,
        threads=args.http_threads,
    )
    children.adopt(web.child)
    web.wait_answering(timeout=90)
    key = web.api_key(f"bench-{tag}", "trades:write", rate_limit_per_s=HTTP_RATE_LIMIT_PER_S)
    return WebServer(web=web, key=key, client_id=ApiKey.objects.get(prefix=key.split("_")[1]).pk)


def load_spec(
    args: argparse.Namespace, server: WebServer, accounts: list[int], requests: int, name: str, path: str
) -> LoadSpec:
    return LoadSpec(
        url=server.web.url(),
        key=server.key,
        accounts=accounts,
        requests=requests,
        connections=args.http_connections,
        beans=BEANS,
        result_path=RUN_DIR / f"{name}.json",
        timeout_s=args.timeout,
        path=path,
    )
