"""Trade figures for GET /metrics (plugged in through settings.METRICS_COLLECTORS)."""

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily

from .selectors import trade_counts_by_status


class TradesCollector:
    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("beans_trades", "Trades by status.", labels=["status"])
        for status, count in trade_counts_by_status().items():
            family.add_metric([status], count)
        yield family
