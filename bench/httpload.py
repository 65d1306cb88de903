"""The HTTP legs' load generator: ``POST /api/trades/`` (or an alternative's path), one trade per
request, many clients at once.

Two implementations with one contract (``LoadSpec`` in, the JSON of ``LoadResult`` out):

* **wrk** (Debian package ``wrk``, 4.1), driven by a Lua script written per run
  (``wrk_script``): one wrk thread, ``connections`` connections. The default, because it
  leaves the two cores to the server. Measured here, 1,000 requests each, 32 clients, one
  series on the same (shared) 2-core machine: wrk used 0.1-0.2 ms of CPU per request, the
  Python client 0.9 ms, and the web tier answered 41-44 requests/s under wrk against 27
  under the Python client. run.py reports the generator's CPU ("load generator" in the CPU
  lines) so the cost stays visible. ``wrk_ensure`` installs wrk with apt-get when it is
  missing and we are root.
* **Python** (``python -m bench.httpload SPEC``): asyncio streams and a hand-written
  HTTP/1.1 exchange, no dependency; the fallback where wrk cannot be had, and the only one
  that paces (``LoadSpec.rate_per_s``: an open-loop schedule, for latency at a given share of
  the peak; Debian's wrk 4 has no rate option, and wrk2 is not packaged).

Both do exactly what the bench needs and wrk alone does not: exactly ``requests``
requests (not a duration), each answered before the run ends; the first request's wall-clock
time (so the throughput window starts there); and the raw latency of every request as the
client sees it (wrk's own percentiles are corrected for coordinated omission, which adds
synthetic samples a closed-loop client never saw). The latency needs each answer matched to
its request: every request in flight is on an account of its own, taken from a queue of the
bench's accounts and put back when the answer (which names the account) arrives, so the
requests also rotate over all the accounts. That needs ``connections <= len(accounts)``.

Connections are kept alive when the server allows it; gunicorn's sync worker (``WEB_THREADS=1``,
the default) answers ``Connection: close``, so both clients reconnect for every request then.
The API key is passed in files only (mode 0600), never on a command line.
"""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

TRADES_PATH = "/api/trades/"


@dataclass(frozen=True)
class LoadSpec:
    """One load run: ``requests`` placements of ``beans`` over ``accounts`` by ``connections`` clients."""

    url: str  # the web tier's base URL, http://127.0.0.1:PORT
    key: str
    accounts: list[int]
    requests: int
    connections: int
    beans: int
    result_path: Path  # where the result JSON appears once every answer has arrived
    timeout_s: float  # bound of the whole run
    # Where to POST: the pipeline's endpoint, or an alternative's under /bench/ (bench.settings);
    # the request is the same everywhere (an endpoint without authentication ignores the key).
    path: str = TRADES_PATH
    # Open loop at this many requests a second (0: closed loop, each client sends its next
    # request when the last is answered). Paced requests are sent on a fixed schedule, and
    # their latency counts from the scheduled instant, so a late send is not hidden.
    rate_per_s: float = 0.0


@dataclass
class LoadResult:
    requests: int  # answers received
    statuses: dict[str, int]  # HTTP status -> answers
    errors: dict[str, int]  # socket errors and timeouts the client counted
    first_sent: float  # epoch seconds of the first request
    last_received: float  # epoch seconds of the last answer
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    unmatched: int = 0  # answers that named no account in flight (error bodies)
    cpu_s: float | None = None  # the Python client's own CPU seconds (wrk's is read from /proc)

    @property
    def non_201(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != "201")

    @property
    def per_s(self) -> float:
        return self.requests / max(self.last_received - self.first_sent, 1e-9)

    def percentile(self, q: float) -> float:
        return percentile_cont(sorted(self.latencies_ms), q)


def percentile_cont(ordered: list[float], q: float) -> float:
    """PostgreSQL's ``percentile_cont``: linear interpolation between the closest ranks."""
    if not ordered:
        return 0.0
    rank = q * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def result_read(path: Path) -> LoadResult:
    data = json.loads(path.read_text())
    return LoadResult(
        requests=int(data["requests"]),
        statuses={str(k): int(v) for k, v in data["statuses"].items()},
        errors={str(k): int(v) for k, v in data.get("errors", {}).items()},
        first_sent=float(data["first_sent"]),
        last_received=float(data["last_received"]),
        latencies_ms=[float(ms) for ms in data["latencies_ms"]],
        unmatched=int(data.get("unmatched", 0)),
        cpu_s=float(data["cpu_s"]) if data.get("cpu_s") is not None else None,
    )


def _private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by us alone (it holds the API key)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


# --------------------------------------------------------------------------- wrk


def wrk_ensure(*, install: bool = True) -> str | None:
    """The path of wrk; install Debian's package first when it is missing and we are root."""
    found = shutil.which("wrk")
    if found or not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt_get(*args: str) -> None:
        subprocess.run(["apt-get", *args], env=env, capture_output=True, timeout=300, check=False)

    apt_get("install", "-y", "-qq", "wrk")
    if not shutil.which("wrk"):  # no package lists yet, or stale ones
        apt_get("update", "-qq")
        apt_get("install", "-y", "-qq", "wrk")
    return shutil.which("wrk")


def wrk_version(wrk: str) -> str:
    """``wrk 4.1.0`` (wrk -v exits 1 after printing its version line)."""
    out = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10, check=False)
    words = (out.stdout + out.stderr).split()
    return f"wrk {words[1]}" if len(words) > 1 and words[0] == "wrk" else "wrk"


WRK_LUA = r"""-- Written by bench/httpload.py for one run; holds the API key: mode 0600, deleted afterwards.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function clock(id)
  ffi.C.clock_gettime(id, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end
local REALTIME, MONOTONIC = 0, 1

local ACCOUNTS = {@ACCOUNTS@}
local QUOTA = @QUOTA@
local BEANS = @BEANS@
local RESULT = "@RESULT@"

wrk.method = "POST"
wrk.path = "@PATH@"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer @KEY@"

local queue, head, tail = {}, 1, 1   -- accounts free to use, oldest first
local sent_at = {}                   -- account in flight -> monotonic send time
local latencies, statuses = {}, {}
local reserved, sent, received, unmatched = 0, 0, 0, 0
local first_sent, last_received = 0, 0

function init(args)
  for _, account in ipairs(ACCOUNTS) do
    queue[tail] = account
    tail = tail + 1
  end
end

-- Called before each request: once the quota is taken, park the connection for a day.
function delay()
  if reserved >= QUOTA then
    return 86400000
  end
  reserved = reserved + 1
  return 0
end

function request()
  local account
  if head < tail then
    account = queue[head]
    queue[head] = nil
    head = head + 1
  else  -- only after error answers kept accounts from coming back
    account = ACCOUNTS[(sent % #ACCOUNTS) + 1]
  end
  sent = sent + 1
  if sent == 1 then
    first_sent = clock(REALTIME)
  end
  sent_at[account] = clock(MONOTONIC)
  return wrk.format(nil, nil, nil, '{"account": ' .. account .. ', "beans": ' .. BEANS .. '}')
end

local function write_result()
  local out = {}
  for status, n in pairs(statuses) do
    out[#out + 1] = string.format('"%d": %d', status, n)
  end
  local ms = {}
  for i, value in ipairs(latencies) do
    ms[i] = string.format("%.3f", value)
  end
  local file = assert(io.open(RESULT .. ".tmp", "w"))
  file:write(string.format(
    '{"requests": %d, "statuses": {%s}, "errors": {}, "first_sent": %.6f, "last_received": %.6f, ' ..
    '"unmatched": %d, "latencies_ms": [%s]}\n',
    received, table.concat(out, ", "), first_sent, last_received, unmatched, table.concat(ms, ",")))
  file:close()
  assert(os.rename(RESULT .. ".tmp", RESULT))
end

function response(status, headers, body)
  local now = clock(MONOTONIC)
  last_received = clock(REALTIME)
  received = received + 1
  statuses[status] = (statuses[status] or 0) + 1
  local account = tonumber(string.match(body or "", '"account"%s*:%s*(%d+)'))
  local started = account and sent_at[account]
  if started then
    latencies[#latencies + 1] = (now - started) * 1000
    sent_at[account] = nil
    queue[tail] = account
    tail = tail + 1
  else
    unmatched = unmatched + 1
  end
  if received >= QUOTA then
    write_result()
    wrk.thread:stop()
  end
end

-- Runs once wrk stops (the bench interrupts it after the result, or -d ran out): its own counts.
function done(summary, latency, requests)
  local e = summary.errors
  local file = assert(io.open(RESULT .. ".wrk", "w"))
  file:write(string.format(
    '{"requests": %d, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, e.connect, e.read, e.write, e.status, e.timeout))
  file:close()
end
"""


def wrk_script(spec: LoadSpec) -> str:
    for value in (spec.key, str(spec.result_path), spec.path):
        if any(ch in value for ch in '"\\\n\r'):
            raise ValueError(f"cannot put {value!r} in a Lua string")
    return (
        WRK_LUA.replace("@ACCOUNTS@", ", ".join(str(a) for a in spec.accounts))
        .replace("@QUOTA@", str(spec.requests))
        .replace("@BEANS@", str(spec.beans))
        .replace("@RESULT@", str(spec.result_path))
        .replace("@PATH@", spec.path)
        .replace("@KEY@", spec.key)
    )


def wrk_argv(wrk: str, spec: LoadSpec, script: Path) -> list[str]:
    """wrk with one thread (one is plenty, and the cores are the server's) and the run's script."""
    if spec.rate_per_s:
        raise ValueError("wrk 4 cannot pace its requests: a paced run takes the Python client")
    _private_file(script, wrk_script(spec))
    return [
        wrk,
        "--threads",
        "1",
        "--connections",
        str(spec.connections),
        "--duration",
        f"{max(int(spec.timeout_s), 1)}s",  # a bound only: the script ends the run by the count
        "--timeout",
        "60s",  # a slower answer counts as a timeout error (and fails the bench)
        "--script",
        str(script),
        spec.url,
    ]


def wrk_errors(spec: LoadSpec) -> dict[str, int]:
    """The socket errors and timeouts wrk counted (written by the script's ``done``), if it wrote them."""
    path = Path(f"{spec.result_path}.wrk")
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {name: int(data[name]) for name in ("connect", "read", "write", "timeout") if data.get(name)}


# --------------------------------------------------------------------------- the Python client


def python_argv(spec: LoadSpec, spec_path: Path) -> list[str]:
    payload = {
        "url": spec.url,
        "key": spec.key,
        "accounts": spec.accounts,
        "requests": spec.requests,
        "connections": spec.connections,
        "beans": spec.beans,
        "result_path": str(spec.result_path),
        "timeout_s": spec.timeout_s,
        "path": spec.path,
        "rate_per_s": spec.rate_per_s,
    }
    _private_file(spec_path, json.dumps(payload))
    return [sys.executable, "-m", "bench.httpload", str(spec_path)]


class _Client:
    """``connections`` keep-alive HTTP/1.1 clients sharing one quota and one queue of accounts."""

    def __init__(self, spec: LoadSpec) -> None:
        parts = urlsplit(spec.url)
        self.spec = spec
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.head = (
            f"POST {spec.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {spec.key}\r\nContent-Type: application/json\r\n"
        )
        self.free: deque[int] = deque(spec.accounts)
        self.reserved = self.received = 0
        self.statuses: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.latencies: list[float] = []
        self.first_sent = self.last_received = 0.0
        self.schedule_start = 0.0  # monotonic; request i is due at schedule_start + i / rate_per_s

    async def connection(self) -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            while self.reserved < self.spec.requests:
                index, self.reserved = self.reserved, self.reserved + 1
                due = 0.0
                if self.spec.rate_per_s:
                    due = self.schedule_start + index / self.spec.rate_per_s
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                if writer is None:
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                assert reader is not None
                account = self.free.popleft()
                body = f'{{"account": {account}, "beans": {self.spec.beans}}}'.encode()
                started = min(due, time.monotonic()) if due else time.monotonic()
                if not self.first_sent:
                    self.first_sent = time.time()
                writer.write(f"{self.head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                status, close = await self.answer(reader)
                self.latencies.append((time.monotonic() - started) * 1000)
                self.last_received = time.time()
                self.received += 1
                self.statuses[status] = self.statuses.get(status, 0) + 1
                self.free.append(account)
                if close:
                    writer.close()
                    writer = None
        finally:
            if writer is not None:
                writer.close()

    @staticmethod
    async def answer(reader: asyncio.StreamReader) -> tuple[str, bool]:
        """Read one response; return its status and whether the server closes the connection."""
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = head[0].split(" ", 2)[1]
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in head[1:] if line)
        }
        await reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers.get("connection", "").lower() == "close"

    async def run(self) -> None:
        self.schedule_start = time.monotonic()
        tasks = [asyncio.create_task(self.connection()) for _ in range(self.spec.connections)]
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=self.spec.timeout_s)

    def result(self) -> dict[str, Any]:
        return {
            "requests": self.received,
            "statuses": self.statuses,
            "errors": self.errors,
            "first_sent": self.first_sent,
            "last_received": self.last_received,
            "unmatched": 0,
            "latencies_ms": [round(ms, 3) for ms in self.latencies],
            "cpu_s": time.process_time(),  # it exits right after: the bench cannot read it from /proc
        }


def main(argv: list[str]) -> int:
    data = json.loads(Path(argv[1]).read_text())
    spec = LoadSpec(**{**data, "result_path": Path(data["result_path"])})
    if spec.connections > len(spec.accounts):
        raise SystemExit("need at least as many accounts as connections")
    client = _Client(spec)
    try:
        asyncio.run(client.run())
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
        kind = "timeout" if isinstance(exc, TimeoutError) else "read"
        client.errors[kind] = client.errors.get(kind, 0) + 1
        print(f"load generator: {exc!r}", file=sys.stderr)
    tmp = Path(f"{spec.result_path}.tmp")
    tmp.write_text(json.dumps(client.result()) + "\n")
    tmp.rename(spec.result_path)
    return 0 if not client.errors else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
