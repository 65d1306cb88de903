"""A worker keeps its database connections between tasks (``CELERY_DB_REUSE_MAX``), so before
and after each task it does what Django does around a request: a connection that broke (a
partition, a failover, a terminated backend) is closed, and the next task opens a new one
instead of failing on the dead one (``reliability.worker._connections_unusable_close``)."""

from celery import signals
from django.db import OperationalError, connection
from django.test import TransactionTestCase

import project.celery  # noqa: F401 - wires the library into the app, its signal handlers with it


def backend_terminate() -> None:
    """End this process's PostgreSQL session from another one, as a failover or an operator would."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    other = connection.copy()
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    finally:
        other.close()


def query_works() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except OperationalError:
        return False


class ConnectionsAroundTasksTests(TransactionTestCase):
    def setUp(self) -> None:
        self.assertTrue(connection.settings_dict["CONN_HEALTH_CHECKS"], "the project turns health checks on")
        self.addCleanup(connection.close)

    def test_a_task_after_the_backend_was_terminated_gets_a_new_connection(self) -> None:
        for signal in (signals.task_postrun, signals.task_prerun):
            with self.subTest(signal.name):
                backend_terminate()
                signal.send(sender=None, task_id="after-a-failover", task=None, args=(), kwargs={})
                self.assertTrue(query_works(), "the broken connection was replaced")

    def test_without_the_check_the_next_task_fails_on_the_dead_connection(self) -> None:
        # The negative control: what every task after a failover met before the hook.
        backend_terminate()
        self.assertFalse(query_works())
