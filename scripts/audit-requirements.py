"""Audit the pinned requirements for known vulnerabilities: ``make audit`` (and ``make test``).

Runs pip-audit on both hashed locks, requirements.txt (the runtime) and requirements-dev.txt (the
tools, tests and bench), exactly as locked: every package, transitive ones included, at its
locked version, with no resolution of its own (``--disable-pip --no-deps``), against the
vulnerability data of PyPI's JSON API (``/pypi/<name>/<version>/json``, which carries the OSV
advisories). Exit 1 on a known vulnerability that is not explained in
``EXPLAINED`` below and in README, "Dependencies audit". When the service cannot be reached, or
answers for none of the packages, the audit says so plainly and exits 0: an audit that could
not run is reported, never passed off as clean and never a reason for a red build.
"""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ("requirements.txt", "requirements-dev.txt")
SERVICE = "pypi"
TIMEOUT_S = 600

# Vulnerability id -> why it does not apply here. Each one is explained in README too.
EXPLAINED: dict[str, str] = {}


def say(line: str) -> None:
    sys.stdout.write(f"audit: {line}\n")
    sys.stdout.flush()


def pip_audit(*args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "pip-audit"), *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


def main() -> int:
    report = audit_report()
    return 0 if report is None else verdict(report)


def audit_report() -> dict[str, Any] | None:
    """Run pip-audit; return its JSON report, or None (said why) when it could not run."""
    ignores = [f"--ignore-vuln={vuln_id}" for vuln_id in EXPLAINED]
    try:
        result = pip_audit(
            *(argument for lock in LOCKS for argument in ("--requirement", lock)),
            "--disable-pip",
            "--no-deps",
            "--vulnerability-service",
            SERVICE,
            "--format",
            "json",
            "--progress-spinner",
            "off",
            "--timeout",
            "15",
            *ignores,
        )
    except subprocess.TimeoutExpired:
        say(f"SKIPPED: pip-audit took longer than {TIMEOUT_S}s; nothing was checked (not a failure)")
        return None
    try:
        report: dict[str, Any] = json.loads(result.stdout)
    except ValueError:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1][:300]
        say(
            f"SKIPPED: pip-audit could not run (package index or vulnerability service unreachable?): {reason}"
        )
        say("nothing was checked; this is reported, not counted as a failure")
        return None
    return report


def verdict(report: dict[str, Any]) -> int:
    """Say what the report holds; return 1 if it names an unexplained vulnerability."""
    dependencies = report.get("dependencies", [])
    skipped = [dep for dep in dependencies if "skip_reason" in dep]
    checked = [dep for dep in dependencies if "skip_reason" not in dep]
    vulnerable = [(dep, vuln) for dep in checked for vuln in dep.get("vulns", [])]
    for dep, vuln in vulnerable:
        fixed = ", ".join(vuln.get("fix_versions") or []) or "no fixed release yet"
        aliases = ", ".join(vuln.get("aliases") or [])
        say(f"{dep['name']} {dep['version']}: {vuln['id']} ({aliases}); fixed in {fixed}")
    if skipped:
        say(
            f"{len(skipped)} of {len(dependencies)} packages could not be checked: the {SERVICE} "
            f"vulnerability service did not answer for them ({skipped[0]['skip_reason']})"
        )
    if not checked:
        say(f"SKIPPED: the {SERVICE} vulnerability service is unreachable from here; nothing was checked")
        say("this is reported, not counted as a failure; run `make audit` where the service is reachable")
        return 0
    if vulnerable:
        say(
            f"FAILED: {len(vulnerable)} known vulnerabilities; bump the pin, or explain the id in "
            "scripts/audit-requirements.py and README, 'Dependencies audit'"
        )
        return 1
    say(
        f"OK: {len(checked)} packages checked, no known vulnerability ({len(EXPLAINED)} explained and ignored)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
