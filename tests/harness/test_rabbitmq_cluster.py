"""The private cluster's command line, short of starting nodes (``tests/e2e/test_cluster_integration.py``
starts them): names, ports, URLs, config, the settings it refuses, and a directory it never removes."""

import os
import tempfile
from pathlib import Path
from unittest import mock

from django.test import SimpleTestCase

from harness.rabbitmq_cluster import Nodes, Refused, main

from .command_line import command_line_run


def nodes(**env: str) -> Nodes:
    with mock.patch.dict(os.environ, env):
        return Nodes()


def run(*argv: str, **env: str) -> tuple[int, str, str]:
    return command_line_run(main, *argv, **env)


class NodesTests(SimpleTestCase):
    def test_names_ports_and_urls_follow_the_environment(self) -> None:
        cluster = nodes(
            RABBITMQ_CLUSTER_NAME="t1", RABBITMQ_CLUSTER_AMQP_PORT="5700", RABBITMQ_CLUSTER_DIST_PORT="26000"
        )
        self.assertEqual(cluster.node_name(2), "t1-c2@localhost")
        self.assertEqual((cluster.amqp_port(3), cluster.dist_port(3)), (5702, 26002))
        self.assertEqual(
            cluster.urls(),
            "amqp://guest:guest@127.0.0.1:5700//;amqp://guest:guest@127.0.0.1:5701//;"
            "amqp://guest:guest@127.0.0.1:5702//",
        )

    def test_the_defaults(self) -> None:
        with mock.patch.dict(os.environ, {}, clear=True):
            cluster = Nodes()
        self.assertEqual(cluster.dir, Path("/tmp/beans-rabbitmq-cluster"))  # noqa: S108 - the documented default
        self.assertEqual(
            (cluster.node_name(1), cluster.amqp_port(1), cluster.dist_port(1)),
            ("beans-c1@localhost", 5681, 25681),
        )
        self.assertEqual(cluster.queues, ["beans", "trades", "housekeeping", "dead-letters"])

    def test_a_node_is_named_in_any_of_four_ways(self) -> None:
        cluster = nodes(RABBITMQ_CLUSTER_NAME="beans")
        for arg in ("c2", "2", "beans-c2", "beans-c2@localhost"):
            self.assertEqual(cluster.index(arg), 2, arg)
        with self.assertRaisesMessage(Refused, "unknown node 'c4'"):
            cluster.index("c4")

    def test_the_config_listens_on_loopback_and_sets_the_consumer_timeout_when_asked(self) -> None:
        self.assertIn("listeners.tcp.local = 127.0.0.1:5682\n", nodes().config(2))
        self.assertNotIn("consumer_timeout", nodes().config(1))
        self.assertIn(
            "consumer_timeout = 5000\n", nodes(RABBITMQ_CLUSTER_CONSUMER_TIMEOUT_MS="5000").config(1)
        )


class CommandLineTests(SimpleTestCase):
    def test_urls_prints_them(self) -> None:
        self.assertEqual(
            run("urls", RABBITMQ_CLUSTER_AMQP_PORT="5690")[:2],
            (0, nodes(RABBITMQ_CLUSTER_AMQP_PORT="5690").urls() + "\n"),
        )

    def test_no_command_or_a_wrong_one_prints_the_usage_and_exits_2(self) -> None:
        for argv in ((), ("help",), ("kill",), ("ctl", "c1"), ("nonsense",)):
            code, _, err = run(*argv)
            self.assertEqual(code, 2, argv)
            self.assertIn("python -m harness.rabbitmq_cluster up", err)

    def test_up_refuses_settings_that_would_touch_the_system_node(self) -> None:
        for env, message in (
            ({"RABBITMQ_CLUSTER_NAME": "rabbit"}, "would clash with the system node"),
            ({"RABBITMQ_CLUSTER_AMQP_PORT": "5670"}, "port 5672 would clash with the system node"),
            ({"RABBITMQ_CLUSTER_DIST_PORT": "25672"}, "port 25672 would clash"),
            ({"RABBITMQ_CLUSTER_NAME": "a.b"}, "letters, digits, - and _ only"),
            ({"RABBITMQ_CLUSTER_AMQP_PORT": "x"}, "ports must be numbers"),
            ({"RABBITMQ_CLUSTER_CONSUMER_TIMEOUT_MS": "1s"}, "a number of milliseconds"),
        ):
            with tempfile.TemporaryDirectory() as workdir:
                code, _, err = run("up", RABBITMQ_CLUSTER_DIR=f"{workdir}/cluster", **env)
                self.assertEqual(code, 1, env)
                self.assertIn(message, err)
                self.assertFalse(Path(workdir, "cluster").exists(), "refused before making anything")

    def test_commands_on_a_cluster_never_made_say_run_up(self) -> None:
        with tempfile.TemporaryDirectory() as workdir:
            for argv in (("status",), ("restart", "c1"), ("ctl", "any", "-q", "ping")):
                code, _, err = run(*argv, RABBITMQ_CLUSTER_DIR=f"{workdir}/none")
                self.assertEqual(code, 1, argv)
                self.assertIn("(run 'up')", err)

    def test_down_never_removes_a_directory_it_did_not_make(self) -> None:
        with tempfile.TemporaryDirectory() as workdir:
            Path(workdir, "precious").write_text("keep me")
            code, _, err = run("down", RABBITMQ_CLUSTER_DIR=workdir, RABBITMQ_CLUSTER_NAME=f"t{os.getpid()}x")
            self.assertEqual(code, 0)
            self.assertIn("not a cluster directory of this script; not removing it", err)
            self.assertTrue(Path(workdir, "precious").exists())

    def test_up_refuses_a_directory_it_did_not_make(self) -> None:
        with tempfile.TemporaryDirectory() as workdir:
            Path(workdir, "precious").write_text("keep me")
            code, _, err = run("up", RABBITMQ_CLUSTER_DIR=workdir)
            self.assertEqual(code, 1)
            self.assertIn("is not a cluster directory of this script; refusing to use it", err)
