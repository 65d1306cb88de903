from typing import Any

from django.core.management.base import BaseCommand

from project.invariants import pipeline_verify


class Command(BaseCommand):
    help = "Check the pipeline's invariants (I1, I2, I3, I5, I9) against the database; exit 1 on a violation."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--in-flight-ok", action="store_true", help="do not count pending trades as violations"
        )

    def handle(self, *args: Any, in_flight_ok: bool, **options: Any) -> None:
        verification = pipeline_verify(in_flight_ok=in_flight_ok)
        violations = verification.violations
        self.stdout.write(
            f"past retention: {verification.past_outbox_retention} trades' outbox messages, "
            f"{verification.past_message_log_retention} deductions' message-log rows "
            "(checked against the ledger and what remains)"
        )
        if not violations:
            self.stdout.write("verify: OK")
            return
        for violation in violations[:200]:
            self.stderr.write(violation)
        if len(violations) > 200:
            self.stderr.write(f"... and {len(violations) - 200} more")
        self.stderr.write(f"verify: FAILED ({len(violations)} violations)")
        raise SystemExit(1)
