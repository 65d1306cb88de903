"""The example project (examples/orders) stays a fair proof of reuse, and its guide stays true.

Its exactly-once tests run against the installed wheel (``make library-test``); these are the
quick checks beside them: the example uses the public API only, every Python block of its
README is code the example contains, its migrations are complete, and ``manage.py check`` says
what the guide says it says.
"""

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from django.test import SimpleTestCase, tag

REPO = Path(__file__).resolve().parent.parent.parent
EXAMPLE = REPO / "examples" / "orders"
# Its tests may reach into internals the public API does not offer (their docstring says which).
EXAMPLE_TESTS = EXAMPLE / "orders_project" / "tests"
SIGNING_KEYS = "test:test-only-signing-key-never-use-in-production"


def example_sources(*, with_tests: bool = False) -> list[Path]:
    return [
        path
        for path in sorted(EXAMPLE.rglob("*.py"))
        if "migrations" not in path.parts and (with_tests or not path.is_relative_to(EXAMPLE_TESTS))
    ]


def example_manage(*args: str, keys: str | None = SIGNING_KEYS) -> subprocess.CompletedProcess[str]:
    """The example's manage.py with this checkout's ``reliability`` (the suite's venv has no wheel)."""
    env = {key: value for key, value in os.environ.items() if key != "RELIABILITY_SIGNING_KEYS"}
    env.update({"DJANGO_SETTINGS_MODULE": "orders_project.settings", "PYTHONPATH": str(REPO)})
    if keys:
        env["RELIABILITY_SIGNING_KEYS"] = keys
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@tag("library")
class LibraryExampleTests(SimpleTestCase):
    def test_the_example_imports_reliability_only_through_its_public_api(self) -> None:
        offending = []
        for path in example_sources():
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                offending += [
                    f"{path.relative_to(REPO)}:{node.lineno} {name}"
                    for name in names
                    if name.startswith("reliability.")
                ]
        self.assertEqual(offending, [], "the example must use `from reliability import ...` only")

    def test_every_python_block_of_the_guide_is_quoted_from_the_example(self) -> None:
        readme = (EXAMPLE / "README.md").read_text()
        blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
        self.assertGreaterEqual(len(blocks), 8)
        sources = {path: path.read_text() for path in example_sources(with_tests=True)}
        for block in blocks:
            with self.subTest(block=block.splitlines()[0]):
                self.assertTrue(
                    any(block in text or textwrap.dedent(block) in text for text in sources.values()),
                    f"not in any file of examples/orders:\n{block}",
                )

    def test_the_example_migrations_are_complete(self) -> None:
        result = example_manage("makemigrations", "--check", "--dry-run", "--noinput")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_manage_py_check_asks_for_the_signing_keys_and_passes_with_them(self) -> None:
        missing = example_manage("check", keys=None)
        self.assertNotEqual(missing.returncode, 0)
        self.assertIn("(reliability.E001) RELIABILITY_SIGNING_KEYS is not set", missing.stderr)
        given = example_manage("check")
        self.assertEqual(given.returncode, 0, given.stderr)
        self.assertIn("System check identified no issues", given.stdout)
