"""The process definitions operators run: systemd units (checked by ``systemd-analyze verify`` where
the tool exists) and the Procfile, both starting the same three processes."""

import configparser
import shutil
import subprocess
import tempfile
from pathlib import Path

from django.test import SimpleTestCase

from harness.processes import REPO

UNITS = REPO / "deploy" / "systemd"
INSTALLED = "/opt/beans"  # where the units expect the checkout (README, "Production")


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser


class SystemdUnitTests(SimpleTestCase):
    names = ("beans-web.service", "beans-worker@.service", "beans-beat.service")

    def test_every_process_restarts_always_from_the_environment_file(self) -> None:
        for name in self.names:
            with self.subTest(unit=name):
                service = unit(name)["Service"]
                self.assertEqual(service["Restart"], "always")
                self.assertEqual(service["EnvironmentFile"], "/etc/beans/env")
                self.assertEqual(service["WorkingDirectory"], INSTALLED)
                self.assertTrue(service["ExecStart"].startswith(f"{INSTALLED}/.venv/bin/"))
                self.assertNotEqual(service.get("User", "root"), "root")

    def test_systemd_analyze_verify_accepts_the_units(self) -> None:
        if shutil.which("systemd-analyze") is None:
            self.skipTest("systemd-analyze is not installed (apt-get install systemd)")
        with tempfile.TemporaryDirectory(prefix="units-") as workdir:
            work = Path(workdir)
            (work / "env").write_text("")
            for name in self.names:
                # The units as installed on this machine: this checkout for /opt/beans, and users
                # that exist here (verify resolves every command and user it names).
                text = (UNITS / name).read_text()
                text = text.replace(INSTALLED, str(REPO)).replace("/etc/beans/env", str(work / "env"))
                text = text.replace("User=beans", "User=root").replace("Group=beans", "Group=root")
                (work / name).write_text(text)
            targets = [str(work / name.replace("@.", "@1.")) for name in self.names]
            done = subprocess.run(
                ["systemd-analyze", "verify", *targets], capture_output=True, text=True, timeout=120
            )
            self.assertEqual(done.returncode, 0, done.stderr)
            self.assertEqual(done.stderr.strip(), "", "no warning either")


class ProcfileTests(SimpleTestCase):
    def test_the_procfile_starts_the_same_processes(self) -> None:
        entries = dict(
            line.split(": ", 1) for line in (REPO / "Procfile").read_text().splitlines() if line.strip()
        )
        self.assertEqual(set(entries), {"web", "worker", "beat"})
        self.assertEqual(entries["web"], "gunicorn -c project/gunicorn.conf.py")
        self.assertTrue(entries["worker"].startswith("celery -A project worker"))
        self.assertTrue(entries["beat"].startswith("celery -A project beat"))
