"""The bench's results: the summary over the repeats (``bench/results/latest.json``) and its report.

Every figure is a median over the repeats (CPU per item too); the goals are the README's
(Performance). A leg that did not run leaves its keys at null.
"""

import argparse
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.common import ACCOUNTS, BEANS, BENCH_SETTINGS, DB_NAME, REPO, RESULTS
from bench.figures import PACED_FIGURES, batch_size_lines, median
from bench.legs.alternatives import ALTERNATIVES, Alternative, alternatives_settings
from bench.legs.baseline import Baseline
from bench.legs.exactly_once import ExactlyOnce
from bench.legs.http import Http


@dataclass
class Repeat:
    """What one repeat measured; a leg left out (``--legs``) stays None (empty for the alternatives)."""

    exactly_once: ExactlyOnce | None = field(default=None)
    baseline: Baseline | None = field(default=None)
    raw_amqp: dict[str, float] | None = field(default=None)
    placement: dict[str, float] | None = field(default=None)
    # The same pipeline with trades placed --placement-batch at a time (trades_place_many).
    exactly_once_batched: ExactlyOnce | None = field(default=None)
    # The same pipeline with trades placed through the web tier, one per HTTP request.
    http: Http | None = field(default=None)
    # The alternatives through the same web tier, by name, in the order they ran.
    alternatives: dict[str, Alternative] = field(default_factory=dict)


def cpu_medians(samples: list[tuple[dict[str, float], int]]) -> dict[str, float]:
    """Median CPU milliseconds per item of each group (the busy share stays a share)."""
    groups = {group for cpu_s, _ in samples for group in cpu_s}
    return {
        group: median(
            [
                cpu_s.get(group, 0.0) * (1 if group == "machine_busy_share" else 1000 / items)
                for cpu_s, items in samples
            ]
        )
        for group in sorted(groups)
    }


OWN_CPU = ("celery", "bench+producers", f"postgres:{DB_NAME}")


def cpu_cost_ratio(repeats: list[Repeat]) -> Any:
    """Median over repeats of (own CPU per baseline message) / (own CPU per trade)."""
    ratios = []
    for r in repeats:
        if r.exactly_once is None or r.baseline is None:
            continue
        eo = sum(r.exactly_once.cpu_s.get(g, 0.0) for g in OWN_CPU) / r.exactly_once.trades
        bl = sum(r.baseline.cpu_s.get(g, 0.0) for g in OWN_CPU) / r.baseline.messages
        if eo > 0 and bl > 0:
            ratios.append(bl / eo)
    return median(ratios)


def settings_snapshot() -> dict[str, Any]:
    """The project settings that shape the figures (all at their defaults: the bench clears overrides)."""
    from reliability.conf import settings

    names = [
        "CELERY_WORKER_PREFETCH_MULTIPLIER",
        "CELERY_TASK_ACKS_LATE",
        "CELERY_BROKER_TRANSPORT_OPTIONS",
        "RELIABILITY_RELAY_GRACE_S",
        "RELIABILITY_RELAY_BATCH_SIZE",
        "RELIABILITY_RELAY_LOOP",
        "RELIABILITY_RELAY_LINGER_MS",
        "RELIABILITY_RELAY_WINDOW",
        "RELIABILITY_ENVELOPE_MAX_MESSAGES",
        "TRADES_DEDUCTION_STREAMS",
    ]
    values = {name: getattr(settings, name, None) for name in names}
    values["DATABASE_CONN_MAX_AGE"] = settings.DATABASES["default"].get("CONN_MAX_AGE")
    values["beat_schedule"] = sorted(getattr(settings, "CELERY_BEAT_SCHEDULE", {}))
    values["alternatives"] = alternatives_settings()
    return values


def alternative_runs(repeats: list[Repeat], name: str) -> list[Alternative]:
    return [r.alternatives[name] for r in repeats if name in r.alternatives]


def alternatives_summary(repeats: list[Repeat]) -> dict[str, Any]:
    """Per alternative: medians over the repeats, and the exactly-once HTTP leg's throughput over
    the alternative's, each ratio taken within one repeat (both ran minutes apart on one server)."""
    summary: dict[str, Any] = {}
    for name in ALTERNATIVES:
        runs = alternative_runs(repeats, name)
        if not runs:
            continue
        summary[f"http_{name}_per_s"] = median([a.per_s for a in runs])
        summary[f"ratio_http_vs_{name}"] = median(
            [r.http.per_s / r.alternatives[name].per_s for r in repeats if r.http and name in r.alternatives]
        )
        summary[f"http_{name}_request_p50_ms"] = median([a.request_p50_ms for a in runs])
        summary[f"http_{name}_request_p99_ms"] = median([a.request_p99_ms for a in runs])
        if name != "noop_view":
            summary[f"http_{name}_p50_ms"] = median([a.p50_ms for a in runs if a.p50_ms is not None])
            summary[f"http_{name}_p99_ms"] = median([a.p99_ms for a in runs if a.p99_ms is not None])
            summary[f"http_{name}_requests_per_s"] = median([a.request_per_s for a in runs])
            summary[f"http_{name}_deducted"] = sum(a.deducted for a in runs)
            summary[f"http_{name}_duplicates"] = sum(a.duplicates for a in runs)
            summary[f"http_{name}_left_in_queue"] = sum(a.left_in_queue or 0 for a in runs)
        summary[f"http_{name}_db_sessions_per_item"] = median(
            [a.db_sessions / (a.trades or a.requests) for a in runs]
        )
        summary[f"http_{name}_requests"] = sum(a.requests for a in runs)
        summary[f"http_{name}_non_201"] = sum(a.non_201 for a in runs)
    return summary


def summarize(args: argparse.Namespace, repeats: list[Repeat]) -> dict[str, Any]:
    """The figures of every repeat and their medians, as ``bench/results/latest.json`` holds them."""
    eos = [r.exactly_once for r in repeats if r.exactly_once]
    bls = [r.baseline for r in repeats if r.baseline]
    eo = median([e.per_s for e in eos])
    bl = median([b.per_s for b in bls])
    raws = [r.raw_amqp["per_s"] for r in repeats if r.raw_amqp]
    raw = median(raws) if raws else None
    batched = [r.exactly_once_batched.per_s for r in repeats if r.exactly_once_batched]
    eob = median(batched) if batched else None
    https = [r.http for r in repeats if r.http]
    http = median([h.per_s for h in https])
    return {
        "exactly_once_per_s": eo,
        "baseline_per_s": bl,
        # The same pipeline, trades placed in batches: what the placement ceiling costs.
        "exactly_once_batched_placement_per_s": eob,
        "ratio_batched_placement_vs_baseline": eob / bl if eob and bl else None,
        "ratio_batched_placement_vs_raw_amqp": eob / raw if eob and raw else None,
        "batched_placement_paced_p50_ms": median(
            [
                r.exactly_once_batched.paced["p50_ms"]
                for r in repeats
                if r.exactly_once_batched and r.exactly_once_batched.paced
            ]
        ),
        "batched_placement_paced_p99_ms": median(
            [
                r.exactly_once_batched.paced["p99_ms"]
                for r in repeats
                if r.exactly_once_batched and r.exactly_once_batched.paced
            ]
        ),
        # The same pipeline through the web tier: POST /api/trades/, one trade per request.
        "http_exactly_once_per_s": http,
        "ratio_http_vs_baseline": http / bl if http and bl else None,
        "http_request_p50_ms": median([h.request_p50_ms for h in https]),
        "http_request_p99_ms": median([h.request_p99_ms for h in https]),
        "http_p50_ms": median([h.p50_ms for h in https]),
        "http_p99_ms": median([h.p99_ms for h in https]),
        # The latency goal is at half of peak: the paced run through HTTP (when there is one).
        **{
            f"http_paced_{figure}": median([h.paced[figure] for h in https if h.paced])
            for figure in PACED_FIGURES
        },
        "http_requests_per_s": median([h.request_per_s for h in https]),
        "http_requests": sum(h.requests for h in https) if https else None,
        "http_non_201": sum(h.non_201 for h in https) if https else None,
        "http_db_sessions_per_item": median([h.db_sessions / h.trades for h in https]),
        # The alternatives through the same web tier (bench/alternatives/), after the exactly-once leg.
        **alternatives_summary(repeats),
        "raw_amqp_per_s": raw,
        "ratio_vs_baseline": eo / bl if eo and bl else None,
        "ratio_vs_raw_amqp": eo / raw if eo and raw else None,
        # The latency goal is at half of peak throughput: the paced run (when there is one).
        "p50_ms": median([e.paced["p50_ms"] for e in eos if e.paced]) or median([e.p50_ms for e in eos]),
        "p99_ms": median([e.paced["p99_ms"] for e in eos if e.paced]) or median([e.p99_ms for e in eos]),
        "latency_at": "half of peak (paced run)" if args.paced_trades else "saturation",
        "saturated_p50_ms": median([e.p50_ms for e in eos]),
        "saturated_p99_ms": median([e.p99_ms for e in eos]),
        "batch_sizes": {
            what: {
                stat: median([e.batch_sizes[what][stat] for e in eos if what in e.batch_sizes])
                for stat in ("mean", "max")
            }
            for what in sorted({what for e in eos for what in e.batch_sizes})
        },
        "settled_p50_ms": median([e.settled_p50_ms for e in eos]),
        "settled_p99_ms": median([e.settled_p99_ms for e in eos]),
        "paced_p50_ms": median([e.paced["p50_ms"] for e in eos if e.paced]),
        "paced_p99_ms": median([e.paced["p99_ms"] for e in eos if e.paced]),
        "paced_settled_p50_ms": median([e.paced["settled_p50_ms"] for e in eos if e.paced]),
        "paced_settled_p99_ms": median([e.paced["settled_p99_ms"] for e in eos if e.paced]),
        "exactly_once_placement_per_s": median([e.placement_per_s for e in eos]),
        "baseline_placement_per_s": median([b.placement_per_s for b in bls]),
        "cpu_ms_per_item": {
            "exactly_once": cpu_medians([(e.cpu_s, e.trades) for e in eos]),
            "batched_placement": cpu_medians(
                [
                    (r.exactly_once_batched.cpu_s, r.exactly_once_batched.trades)
                    for r in repeats
                    if r.exactly_once_batched
                ]
            ),
            "baseline": cpu_medians([(b.cpu_s, b.messages) for b in bls]),
            "http": cpu_medians([(h.cpu_s, h.trades) for h in https]),
            # Per trade; the no-op view's per request.
            **{
                f"http_{name}": cpu_medians(
                    [(a.cpu_s, a.trades or a.requests) for a in alternative_runs(repeats, name)]
                )
                for name in ALTERNATIVES
                if alternative_runs(repeats, name)
            },
        },
        # Less sensitive to the machine's other load than the throughput ratio: CPU the bench's own
        # processes (producers, Celery, its PostgreSQL backends) spent per baseline message / per trade.
        "cpu_cost_ratio_vs_baseline": cpu_cost_ratio(repeats),
        # What one trade's own transaction costs, and the throughput that alone allows.
        "placement": {
            key: median([r.placement[key] for r in repeats if r.placement])
            for key in ("python_cpu_ms", "postgres_cpu_ms", "ceiling_per_s")
        },
        "cpu_count": os.cpu_count(),
        "params": {
            "trades": args.trades,
            "workers": args.workers,
            "concurrency": args.concurrency,
            "repeats": args.repeats,
            "producers": args.producers,
            "producer_kind": "processes",
            "raw_messages": args.raw_messages,
            "paced_trades": args.paced_trades,
            "paced_share": args.paced_share,
            "housekeeping_worker": args.housekeeping_worker,
            "http_paced_trades": args.http_paced_trades,
            "placement_batch": args.placement_batch,
            "batched_trades": args.batched_trades,
            "accounts": ACCOUNTS,
            "beans_per_trade": BEANS,
            "worker_loglevel": args.loglevel,
            "http": None
            if args.no_http
            else {
                "requests_per_leg": args.http_trades,
                "gunicorn_workers": args.http_workers,
                "gunicorn_threads": args.http_threads,
                "connections": args.http_connections,
                "client": https[0].client if https else None,
                "settings": BENCH_SETTINGS["DJANGO_SETTINGS_MODULE"],
                "celery_db_reuse_max": args.celery_db_reuse_max,
                "alternatives": args.alternatives,
            },
        },
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "settings": settings_snapshot(),
        "repeats": [asdict(r) for r in repeats],
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# (summary key, what it is, the goal's bound, whether the figure must be at least or at most it)
GOALS = [
    ("ratio_vs_baseline", "one trade per call vs baseline", 1.5, "min"),
    ("ratio_http_vs_best_practice_celery", "HTTP vs best-practice Celery", 3.0, "min"),
    ("ratio_http_vs_django_celery_outbox", "HTTP vs django-celery-outbox", 3.0, "min"),
    ("ratio_http_vs_noop_view", "HTTP vs no-op view", 0.5, "min"),
    ("http_paced_p99_ms", "HTTP request->deducted p99 at half of peak (ms)", 50.0, "max"),
    ("ratio_batched_placement_vs_baseline", "batched vs baseline", 4.0, "min"),
    ("ratio_batched_placement_vs_raw_amqp", "batched vs raw AMQP", 0.6, "min"),
    ("metrics_scrape_ratio_1m_vs_1k", "metrics scrape 1M vs 1k", 1.5, "max"),
    ("history_worst_ratio_10m_vs_10k", "slowest daily page, 10M vs 10k rows", 1.5, "max"),
]


def goal_lines(summary: dict[str, Any]) -> list[str]:
    """Each goal the run measured: its figure, its bound, and whether it is met."""
    lines = []
    for key, what, bound, kind in GOALS:
        value = summary.get(key)
        if value is None:
            continue
        met = value >= bound if kind == "min" else value <= bound
        sign = ">=" if kind == "min" else "<="
        lines.append(f"{what} {value:.2f} ({sign} {bound:g}: {'met' if met else 'NOT met'})")
    return lines


def rounded(value: Any) -> Any:
    """Floats to 4 decimals, recursively: the noise is far larger."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(item) for item in value]
    return value


def results_write(summary: dict[str, Any]) -> None:
    """Write the summary to ``bench/results/latest.json``, its floats rounded."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rounded(summary), indent=2) + "\n")


def _repeats_lines(summary: dict[str, Any], p: dict[str, Any]) -> list[str]:
    """Each repeat's throughputs, one line per repeat."""
    out: list[str] = []
    for i, r in enumerate(summary["repeats"], start=1):
        e, b, raw = r["exactly_once"], r["baseline"], r["raw_amqp"]
        parts = []
        if e:
            parts.append(
                f"exactly-once {e['per_s']:7.1f}/s (placed {e['placement_per_s']:6.1f}/s, "
                f"p50 {e['p50_ms']:6.0f} ms, p99 {e['p99_ms']:6.0f} ms)"
            )
        if b:
            parts.append(f"baseline {b['per_s']:7.1f}/s (sent {b['placement_per_s']:6.0f}/s)")
        if raw:
            parts.append(f"raw {raw['per_s']:7.0f}/s")
        if r.get("http"):
            parts.append(f"http {r['http']['per_s']:7.1f}/s")
        parts += [f"{name} {alt['per_s']:7.1f}/s" for name, alt in r["alternatives"].items()]
        if parts:
            out.append(f"  repeat {i}: {' | '.join(parts)}")
    return out


def _exactly_once_lines(summary: dict[str, Any], p: dict[str, Any]) -> list[str]:
    """The exactly-once legs: throughput, batch sizes, latency saturated and paced, batched placement."""
    out: list[str] = []
    if summary["exactly_once_per_s"] is not None:
        out.append(f"exactly-once : {summary['exactly_once_per_s']:9.1f} deductions/s end to end")
        out += [f"               {line}" for line in batch_size_lines(summary["batch_sizes"])]
        out.append(
            f"               trade->deducted p50 {summary['saturated_p50_ms']:.0f} ms, "
            f"p99 {summary['saturated_p99_ms']:.0f} ms; "
            f"trade->settled p50 {summary['settled_p50_ms']:.0f} ms, p99 {summary['settled_p99_ms']:.0f} ms"
        )
        out.append("               (under saturation: these include the backlog the producers build up)")
    if p["paced_trades"] and summary["paced_p50_ms"] is not None:
        out.append(
            f"  paced run  : trade->deducted p50 {summary['paced_p50_ms']:.0f} ms, p99 {summary['paced_p99_ms']:.0f} ms; "
            f"trade->settled p50 {summary['paced_settled_p50_ms']:.0f} ms, "
            f"p99 {summary['paced_settled_p99_ms']:.0f} ms "
            f"({p['paced_trades']} trades at {p['paced_share']:.0%} of the throughput)"
        )
    if summary["exactly_once_batched_placement_per_s"]:
        batched_sizes = {
            what: size
            for r in summary["repeats"][-1:]
            if r["exactly_once_batched"]
            for what, size in r["exactly_once_batched"]["batch_sizes"].items()
        }
        out.append(
            f"  with trades placed {p['placement_batch']} per call (trades_place_many): "
            f"{summary['exactly_once_batched_placement_per_s']:.1f} deductions/s end to end; "
            + ", ".join(f"{what} mean {size['mean']:.1f}" for what, size in batched_sizes.items())
        )
        if summary["batched_placement_paced_p99_ms"]:
            out.append(
                f"               paced at {p['paced_share']:.0%} of its throughput: trade->deducted "
                f"p50 {summary['batched_placement_paced_p50_ms']:.0f} ms, "
                f"p99 {summary['batched_placement_paced_p99_ms']:.0f} ms"
            )
    return out


def _http_lines(summary: dict[str, Any], p: dict[str, Any]) -> list[str]:
    """The exactly-once leg through HTTP: throughput, request and end-to-end latency, the paced run."""
    out: list[str] = []
    if summary["http_exactly_once_per_s"]:
        h = p["http"]
        out.append(
            f"through HTTP : {summary['http_exactly_once_per_s']:9.1f} trades/s placed by POST /api/trades/ "
            f"and deducted ({summary['http_requests_per_s']:.1f} requests/s answered; gunicorn "
            f"{h['gunicorn_workers']} x {h['gunicorn_threads']}, {h['connections']} clients, {h['client']})"
        )
        out.append(
            f"               request p50 {summary['http_request_p50_ms']:.0f} ms, "
            f"p99 {summary['http_request_p99_ms']:.0f} ms; request->deducted p50 {summary['http_p50_ms']:.0f} ms, "
            f"p99 {summary['http_p99_ms']:.0f} ms; {summary['http_requests']} requests, "
            f"{summary['http_non_201']} not 201; {summary['http_db_sessions_per_item']:.2f} new database "
            f"sessions per trade"
        )
        if summary["http_paced_p99_ms"] is not None:
            out.append(
                f"               paced at {p['paced_share']:.0%} of its throughput "
                f"({summary['http_paced_rate_per_s']:.0f} requests/s, open loop, Python client): "
                f"request p50 {summary['http_paced_request_p50_ms']:.0f} ms, "
                f"p99 {summary['http_paced_request_p99_ms']:.0f} ms; request->deducted "
                f"p50 {summary['http_paced_p50_ms']:.0f} ms, p99 {summary['http_paced_p99_ms']:.0f} ms"
            )
            out.append(
                f"               of which placed -> relayed (confirmed, marked sent) "
                f"p50 {summary['http_paced_relayed_p50_ms']:.0f} ms, p99 {summary['http_paced_relayed_p99_ms']:.0f} ms; "
                f"relayed -> deducted p50 {summary['http_paced_relayed_to_deducted_p50_ms']:.0f} ms, "
                f"p99 {summary['http_paced_relayed_to_deducted_p99_ms']:.0f} ms"
            )
    return out


def _alternatives_lines(summary: dict[str, Any], p: dict[str, Any]) -> list[str]:
    """Each alternative through the same web tier, against the exactly-once HTTP leg."""
    out: list[str] = []
    if any(f"http_{name}_per_s" in summary for name in ALTERNATIVES):
        out.append(
            f"alternatives through the same web tier ({p['http']['requests_per_leg']} requests each, "
            f"the same clients; ratio = exactly-once through HTTP / the alternative, within each repeat):"
        )
    for name in ALTERNATIVES:
        if f"http_{name}_per_s" not in summary:
            continue
        ratio = summary[f"ratio_http_vs_{name}"]
        ratio_text = f"ratio {ratio:.3f}" if ratio is not None else "no ratio (no exactly-once HTTP leg)"
        requests = (
            f"request p50 {summary[f'http_{name}_request_p50_ms']:.0f} ms, "
            f"p99 {summary[f'http_{name}_request_p99_ms']:.0f} ms"
        )
        if name == "noop_view":
            out.append(
                f"  {name:21s}: {summary[f'http_{name}_per_s']:9.1f} requests/s answered; {requests}; "
                f"{ratio_text}"
            )
            continue
        out.append(
            f"  {name:21s}: {summary[f'http_{name}_per_s']:9.1f} trades/s placed and deducted "
            f"({summary[f'http_{name}_requests_per_s']:.1f} requests/s answered); {ratio_text}"
        )
        out.append(
            f"  {'':21s}  {requests}; request->deducted p50 {summary[f'http_{name}_p50_ms']:.0f} ms, "
            f"p99 {summary[f'http_{name}_p99_ms']:.0f} ms; {summary[f'http_{name}_deducted']} deducted, "
            f"{summary[f'http_{name}_duplicates']} duplicates, {summary[f'http_{name}_non_201']} not 201; "
            f"{summary[f'http_{name}_db_sessions_per_item']:.2f} new database sessions per trade"
        )
    return out


def _others_lines(summary: dict[str, Any], p: dict[str, Any]) -> list[str]:
    """The baseline, raw AMQP, and CPU per item of every leg."""
    out: list[str] = []
    if summary["baseline_per_s"] is not None:
        out.append(
            f"baseline     : {summary['baseline_per_s']:9.1f} updates/s (plain Celery, acks_late, no confirms)"
        )
    if summary["raw_amqp_per_s"]:
        out.append(
            f"raw AMQP     : {summary['raw_amqp_per_s']:9.1f} msgs/s "
            f"({p['raw_messages']} persistent msgs, batched confirms, manual acks)"
        )
    for kind, per_group in summary["cpu_ms_per_item"].items():
        if not per_group:
            continue
        busy = per_group.get("machine_busy_share", 0)
        groups = ", ".join(f"{g} {ms:.1f}" for g, ms in per_group.items() if g != "machine_busy_share")
        out.append(f"CPU ms per {kind:12s}: {groups} (machine busy {busy:.0%})")
    return out


def _ratios_lines(summary: dict[str, Any], p: dict[str, Any]) -> list[str]:
    """The ratios, the goals, and the placement ceiling."""
    out: list[str] = []
    if summary["ratio_vs_baseline"] is not None:
        out.append(f"ratio exactly_once/baseline = {summary['ratio_vs_baseline']:.3f}")
    if summary["cpu_cost_ratio_vs_baseline"]:
        out.append(
            f"  CPU-cost ratio (baseline own CPU per msg / exactly-once own CPU per trade) = "
            f"{summary['cpu_cost_ratio_vs_baseline']:.3f}"
        )
    if summary["ratio_vs_raw_amqp"]:
        out.append(f"ratio exactly_once/raw_amqp = {summary['ratio_vs_raw_amqp']:.4f}")
    if summary["ratio_http_vs_baseline"]:
        out.append(f"ratio http_exactly_once/baseline = {summary['ratio_http_vs_baseline']:.3f}")
    for name in ALTERNATIVES:
        if summary.get(f"ratio_http_vs_{name}"):
            out.append(f"ratio http_exactly_once/{name} = {summary[f'ratio_http_vs_{name}']:.3f}")
    out.append("goals (README, Performance): " + "; ".join(goal_lines(summary)))
    if summary["ratio_batched_placement_vs_baseline"]:
        out.append(
            f"with batched placement ({p['placement_batch']} trades per call): "
            f"{summary['ratio_batched_placement_vs_baseline']:.2f}x baseline"
            + (
                f", {100 * summary['ratio_batched_placement_vs_raw_amqp']:.1f}% of raw AMQP"
                if summary["ratio_batched_placement_vs_raw_amqp"]
                else ""
            )
        )
    placement = summary["placement"]
    if placement.get("ceiling_per_s"):
        vs_baseline = (
            f" ({placement['ceiling_per_s'] / summary['baseline_per_s']:.2f}x baseline)"
            if summary["baseline_per_s"]
            else ""
        )
        out.append(
            f"placement alone (trade_place, one transaction): {placement['python_cpu_ms']:.2f} ms Python + "
            f"{placement['postgres_cpu_ms']:.2f} ms PostgreSQL CPU per trade -> at most "
            f"{placement['ceiling_per_s']:.0f} trades/s on {summary['cpu_count']} cores"
            f"{vs_baseline} even if relay and consumers were free"
        )
    return out


def report(summary: dict[str, Any]) -> None:
    """Print the summary: each repeat's throughputs, then the medians, the ratios and the goals."""
    p = summary["params"]
    print()
    print("=" * 78)
    print(
        f"N={p['trades']} trades, W={p['workers']} worker(s) x C={p['concurrency']}"
        f"{' + a housekeeping worker x 1' if p.get('housekeeping_worker') else ''}, "
        f"{p['producers']} producer processes, cpu_count={summary['cpu_count']}, "
        f"repeats={p['repeats']} (medians below)"
    )
    for section in (
        _repeats_lines,
        _exactly_once_lines,
        _http_lines,
        _alternatives_lines,
        _others_lines,
        _ratios_lines,
    ):
        for line in section(summary, p):
            print(line)
    print(f"results: {RESULTS.relative_to(REPO)}")
    print("=" * 78)
