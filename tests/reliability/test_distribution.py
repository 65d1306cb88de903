"""The library as another project gets it: ``pip wheel .`` builds a wheel of ``reliability``
alone, which installs into a clean virtualenv (its dependencies from their ranges) where the
public API imports, lazily, and works once Django is set up with nothing but the app installed.
"""

import shutil
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

from django.test import SimpleTestCase, tag

import reliability
from harness.processes import REPO

# Run by the clean venv's Python, outside the repository: only the installed wheel is importable.
USER_SCRIPT = textwrap.dedent(
    """
    import sys
    import reliability
    assert not any(m == "django" or m.startswith(("django.", "celery")) for m in sys.modules), (
        "importing reliability must not import Django or Celery"
    )
    assert reliability.__file__.startswith(sys.prefix), reliability.__file__

    import django
    from django.conf import settings
    settings.configure(
        INSTALLED_APPS=[
            "django.contrib.admin",  # for reliability's admin pages (ReadOnlyModelAdmin)
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.messages",
            "django.contrib.sessions",
            "reliability",
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "unused"}},
    )
    django.setup()
    from reliability import exactly_once_task, outbox_enqueue, Message
    for name in reliability.__all__:
        getattr(reliability, name)

    @exactly_once_task(name="invoices.issue", queue="invoices")
    def invoice_issue(message: Message) -> str:
        return "issued"

    print("public API:", len(reliability.__all__), "names;", invoice_issue.name, reliability.__version__)
    """
)


@tag("integration", "library")
class WheelTests(SimpleTestCase):
    def test_the_wheel_holds_reliability_only_and_its_public_api_works_in_a_clean_venv(self) -> None:
        with tempfile.TemporaryDirectory(prefix="wheel-") as workdir:
            work = Path(workdir)
            # From a copy: setuptools writes build/ and *.egg-info/ next to the sources.
            source = work / "source"
            shutil.copytree(
                REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", ".run", "build", "*.egg-info")
            )
            build = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "wheel",
                    "--no-deps",
                    "-q",
                    "-w",
                    str(work / "dist"),
                    str(source),
                ],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=600,
            )
            self.assertEqual(build.returncode, 0, build.stderr)
            (wheel,) = (work / "dist").glob("*.whl")
            names = zipfile.ZipFile(wheel).namelist()
            self.assertEqual(
                {name.split("/")[0] for name in names if ".dist-info/" not in name}, {"reliability"}
            )
            for expected in (
                "reliability/py.typed",
                "reliability/migrations/0001_initial.py",
                "reliability/templates/reliability/pipeline_health.html",
                "reliability/management/commands/__init__.py",
            ):
                self.assertIn(expected, names)
            self.assertTrue(any(name.endswith(".dist-info/licenses/LICENSE") for name in names), names)

            subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True, timeout=300)
            python = str(work / "venv" / "bin" / "python")
            install = subprocess.run(
                [python, "-m", "pip", "install", "-q", str(wheel)],
                capture_output=True,
                text=True,
                timeout=900,
            )
            self.assertEqual(install.returncode, 0, install.stderr[-3000:])
            used = subprocess.run(
                [python, "-c", USER_SCRIPT], cwd=work, capture_output=True, text=True, timeout=120
            )
            self.assertEqual(used.returncode, 0, used.stderr[-3000:])
            self.assertIn(f"public API: {len(reliability.__all__)} names; invoices.issue", used.stdout)
