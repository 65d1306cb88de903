"""The private PostgreSQL cluster short of starting nodes (``tests/e2e/test_pgcluster_integration.py``
starts them): names, ports, URLs, the files it writes, the settings it refuses, the command line,
and a directory it never takes or removes."""

import os
import sys
import tempfile
from pathlib import Path
from unittest import mock

from django.test import SimpleTestCase

from harness.postgres_cluster import PostgresCluster
from harness.postgres_cluster.cli import main
from harness.postgres_cluster.files import patroni_config, patronictl_config, post_bootstrap_script
from harness.postgres_cluster.install import version_key
from harness.postgres_cluster.nodes import Member, Nodes
from harness.postgres_cluster.procs import argv_of, runs
from harness.postgres_cluster.settings import Refused, Settings

from .command_line import command_line_run

BIN = Path("/usr/lib/postgresql/16/bin")


def run(*argv: str, **env: str) -> tuple[int, str, str]:
    return command_line_run(main, *argv, **env)


def env_of(**env: str) -> dict[str, str]:
    return {"POSTGRES_CLUSTER_APP_USER": "alice", **env}


class SettingsTests(SimpleTestCase):
    def test_the_defaults(self) -> None:
        settings = Settings({"POSTGRES_CLUSTER_APP_USER": "alice"})
        self.assertEqual(settings.dir, Path("/tmp/beans-postgres-cluster"))  # noqa: S108 - the documented default
        self.assertEqual(settings.nodes, (1, 2, 3))
        self.assertEqual((settings.pg_port(1), settings.api_port(1)), (5441, 8101))
        self.assertEqual((settings.etcd_port, settings.etcd_peer_port), (2479, 2480))
        self.assertEqual((settings.name, settings.db, settings.timeout_s), ("beans", "beans", 90))
        self.assertTrue(settings.synchronous)

    def test_an_empty_variable_counts_as_unset(self) -> None:
        settings = Settings({"POSTGRES_CLUSTER_NAME": "", "POSTGRES_CLUSTER_PG_PORT": ""})
        self.assertEqual((settings.name, settings.pg_port(2)), ("beans", 5442))

    def test_the_app_user_defaults_to_this_os_user(self) -> None:
        with mock.patch("harness.postgres_cluster.settings.os_user", return_value="bob"):
            self.assertEqual(Settings({}).app_user, "bob")

    def test_ports_and_places_follow_the_environment(self) -> None:
        settings = Settings(
            {
                "POSTGRES_CLUSTER_DIR": "/srv/t1/../t2",
                "POSTGRES_CLUSTER_NODES": "2",
                "POSTGRES_CLUSTER_PG_PORT": "15440",
                "POSTGRES_CLUSTER_API_PORT": "18100",
                "POSTGRES_CLUSTER_ETCD_PORT": "22400",
            }
        )
        self.assertEqual(settings.dir, Path("/srv/t2"))
        self.assertEqual(settings.nodes, (1, 2))
        self.assertEqual(settings.ports(), [22400, 22401, 15440, 18100, 15441, 18101])
        self.assertEqual(settings.data_dir(2), Path("/srv/t2/p2/data"))
        self.assertEqual(settings.config_file(1), Path("/srv/t2/p1/patroni.yml"))

    def test_urls_name_every_node_and_ask_for_the_writable_one(self) -> None:
        settings = Settings({"POSTGRES_CLUSTER_APP_USER": "alice", "POSTGRES_CLUSTER_DB": "shop"})
        self.assertEqual(
            settings.url(),
            "postgresql://alice@127.0.0.1:5441,127.0.0.1:5442,127.0.0.1:5443/shop?target_session_attrs=read-write",
        )
        self.assertEqual(
            settings.conninfo(),
            "host=127.0.0.1,127.0.0.1,127.0.0.1 port=5441,5442,5443 user=alice dbname=shop "
            "target_session_attrs=read-write",
        )
        self.assertEqual(settings.node_url(3), "postgresql://alice@127.0.0.1:5443/postgres")

    def test_a_node_is_named_p2_or_2(self) -> None:
        settings = Settings({})
        self.assertEqual((settings.index("p2"), settings.index("2")), (2, 2))
        with self.assertRaisesMessage(Refused, "unknown node 'p4' (expected one of p1 p2 p3 or leader)"):
            settings.index("p4")

    def test_synchronous_reads_on_and_off_words(self) -> None:
        for word, expected in (("ON", True), ("yes", True), ("1", True), ("off", False), ("False", False)):
            self.assertEqual(Settings({"POSTGRES_CLUSTER_SYNCHRONOUS": word}).synchronous, expected, word)
        self.assertFalse(Settings({"POSTGRES_CLUSTER_NODES": "1"}).sync_wanted, "one node has no standby")

    def test_check_refuses_what_would_touch_the_system_or_cannot_work(self) -> None:
        for env, message in (
            ({"POSTGRES_CLUSTER_NODES": "0"}, "a number from 1 to 9"),
            ({"POSTGRES_CLUSTER_NODES": "10"}, "a number from 1 to 9"),
            ({"POSTGRES_CLUSTER_PG_PORT": "x"}, "must be numbers"),
            ({"POSTGRES_CLUSTER_TIMEOUT_S": "1m"}, "must be numbers"),
            ({"POSTGRES_CLUSTER_NAME": "a.b"}, "letters, digits, - and _ only"),
            ({"POSTGRES_CLUSTER_DIR": "/srv/a b"}, "an absolute path of letters"),
            ({"POSTGRES_CLUSTER_DIR": "/var/lib/postgresql/x"}, "belongs to the system's PostgreSQL or etcd"),
            ({"POSTGRES_CLUSTER_DIR": "/etc/postgresql"}, "belongs to the system's PostgreSQL or etcd"),
            ({"POSTGRES_CLUSTER_DB": "1db"}, "POSTGRES_CLUSTER_DB"),
            ({"POSTGRES_CLUSTER_APP_USER": "a b"}, "POSTGRES_CLUSTER_APP_USER"),
            ({"POSTGRES_CLUSTER_APP_USER": "replicator"}, "is the replication role"),
            ({"POSTGRES_CLUSTER_MAX_FAILOVER_LAG": "1MB"}, "a number of bytes"),
            ({"POSTGRES_CLUSTER_SYNCHRONOUS": "maybe"}, "must be on or off, not 'maybe'"),
            ({"POSTGRES_CLUSTER_PG_PORT": "5430"}, "port 5432 would clash"),
            ({"POSTGRES_CLUSTER_ETCD_PORT": "2378"}, "port 2379 would clash"),
            ({"POSTGRES_CLUSTER_API_PORT": "1000"}, "port 1000 is out of range"),
            ({"POSTGRES_CLUSTER_API_PORT": "5442"}, "port ranges overlap"),
        ):
            with self.assertRaisesMessage(Refused, message, msg=str(env)):
                Settings({"POSTGRES_CLUSTER_APP_USER": "alice", **env}).check()

    def test_check_passes_the_defaults(self) -> None:
        Settings({"POSTGRES_CLUSTER_APP_USER": "alice"}).check()


class FilesTests(SimpleTestCase):
    cluster = Settings(
        {
            "POSTGRES_CLUSTER_DIR": "/srv/pgc",
            "POSTGRES_CLUSTER_NAME": "t9",
            "POSTGRES_CLUSTER_APP_USER": "alice",
        }
    )

    def test_a_node_listens_on_loopback_on_its_own_ports_and_data(self) -> None:
        config = patroni_config(self.cluster, 2, BIN)
        for line in (
            "scope: t9\n",
            "name: p2\n",
            "  listen: 127.0.0.1:8102\n",
            "  hosts: 127.0.0.1:2479\n",
            "  listen: 127.0.0.1:5442\n",
            "  data_dir: /srv/pgc/p2/data\n",
            "  bin_dir: /usr/lib/postgresql/16/bin\n",
            "    unix_socket_directories: /srv/pgc/run\n",
            "  post_bootstrap: /srv/pgc/post-bootstrap\n",
            "        log_line_prefix: '%m [%p] p2 %q%u@%d '\n",
        ):
            self.assertIn(line, config)
        self.assertNotIn("5432", config)

    def test_failover_is_synchronous_and_immediate_unless_asked_otherwise(self) -> None:
        config = patroni_config(self.cluster, 1, BIN)
        for line in ("    synchronous_mode: true\n", "    primary_start_timeout: 0\n", "    ttl: 10\n"):
            self.assertIn(line, config)
        self.assertIn("    maximum_lag_on_failover: 1048576\n", config)
        asynchronous = Settings(
            {"POSTGRES_CLUSTER_SYNCHRONOUS": "off", "POSTGRES_CLUSTER_MAX_FAILOVER_LAG": "9"}
        )
        config = patroni_config(asynchronous, 1, BIN)
        self.assertIn("    synchronous_mode: false\n", config)
        self.assertIn("    maximum_lag_on_failover: 9\n", config)

    def test_patronictl_sees_the_scope_and_etcd(self) -> None:
        self.assertEqual(
            patronictl_config(self.cluster),
            "# Written by harness.postgres_cluster: patronictl's view of cluster t9.\n"
            "scope: t9\netcd3:\n  hosts: 127.0.0.1:2479\n",
        )

    def test_post_bootstrap_makes_the_app_role_and_database(self) -> None:
        script = post_bootstrap_script(self.cluster, BIN)
        self.assertTrue(script.startswith("#!/bin/sh\n"))
        self.assertIn(
            '"/usr/lib/postgresql/16/bin/psql" -X -q -v ON_ERROR_STOP=1 -d "$1" <<\'SQL\'\n', script
        )
        self.assertIn(
            'CREATE ROLE "alice" LOGIN SUPERUSER;\nCREATE DATABASE "beans" OWNER "alice";\nSQL\n', script
        )

    def test_post_bootstrap_does_not_make_the_postgres_role_again(self) -> None:
        script = post_bootstrap_script(Settings({"POSTGRES_CLUSTER_APP_USER": "postgres"}), BIN)
        self.assertNotIn("CREATE ROLE", script)
        self.assertIn('CREATE DATABASE "beans" OWNER "postgres";', script)


class ParsingTests(SimpleTestCase):
    def test_a_member_as_patroni_reports_it(self) -> None:
        member = Member.from_patroni(
            {
                "name": "p2",
                "role": "sync_standby",
                "state": "creating replica",
                "timeline": 3,
                "lag": 0,
                "host": "x",
            }
        )
        self.assertEqual(str(member), "p2 sync_standby creating_replica 3 0")
        self.assertEqual(
            str(Member.from_patroni({"name": "p1", "role": "leader", "lag": ""})), "p1 leader - - -"
        )

    def test_the_program_a_process_runs(self) -> None:
        self.assertTrue(runs(["/usr/bin/python3", "/usr/bin/patroni", "/tmp/x/p1/patroni.yml"], "patroni"))  # noqa: S108
        self.assertTrue(runs(["/usr/lib/postgresql/16/bin/postgres", "-D", "/d"], "postgres"))
        self.assertFalse(runs(["postgres: t9: checkpointer "], "postgres"))
        self.assertFalse(runs(["/usr/bin/python3", "/usr/bin/patronictl", "list"], "patroni"))
        self.assertFalse(runs([], "etcd"))

    def test_the_arguments_of_this_process_and_of_none(self) -> None:
        self.assertEqual(argv_of(os.getpid()), sys.orig_argv)
        self.assertEqual(argv_of(2**22 + 1), [])

    def test_the_newest_postgresql_wins_as_sort_v_says(self) -> None:
        self.assertEqual(max(["9.6", "16", "15"], key=version_key), "16")
        with tempfile.TemporaryDirectory() as workdir:
            (Path(workdir) / "postgres").touch(mode=0o755)
            self.assertEqual(Nodes(env_of(POSTGRES_CLUSTER_BIN_DIR=workdir)).bin_dir(), Path(workdir))
        with self.assertRaisesMessage(Refused, "no postgres in POSTGRES_CLUSTER_BIN_DIR=/nonexistent"):
            Nodes(env_of(POSTGRES_CLUSTER_BIN_DIR="/nonexistent")).bin_dir()


class CommandLineTests(SimpleTestCase):
    def test_urls_prints_the_url_or_the_conninfo(self) -> None:
        env = {"POSTGRES_CLUSTER_PG_PORT": "15440", "POSTGRES_CLUSTER_APP_USER": "alice"}
        self.assertEqual(run("urls", **env)[:2], (0, Settings(env).url() + "\n"))
        self.assertEqual(run("urls", "--conninfo", **env)[:2], (0, Settings(env).conninfo() + "\n"))

    def test_no_command_or_a_wrong_one_prints_the_usage_and_exits_2(self) -> None:
        for argv in (
            (),
            ("help",),
            ("kill",),
            ("kill", "p1", "p2"),
            ("restart",),
            ("urls", "-x"),
            ("nonsense",),
        ):
            code, _, err = run(*argv)
            self.assertEqual(code, 2, argv)
            self.assertIn("python -m harness.postgres_cluster kill-patroni NODE", err)
            self.assertIn('(NODE: p1, p2, p3 or 1, 2, 3, or "leader" for the current leader)', err)

    def test_up_refuses_bad_settings_before_making_anything(self) -> None:
        for env, message in (
            ({"POSTGRES_CLUSTER_PG_PORT": "5432"}, "port 5432 would clash"),
            ({"POSTGRES_CLUSTER_NODES": "x"}, "a number from 1 to 9"),
            ({"POSTGRES_CLUSTER_SYNCHRONOUS": "sometimes"}, "must be on or off"),
        ):
            with tempfile.TemporaryDirectory() as workdir:
                code, _, err = run("up", POSTGRES_CLUSTER_DIR=f"{workdir}/cluster", **env)
                self.assertEqual(code, 1, env)
                self.assertIn("postgres-cluster: error: ", err)
                self.assertIn(message, err)
                self.assertFalse(Path(workdir, "cluster").exists(), "refused before making anything")

    def test_commands_on_a_cluster_never_made_say_run_up(self) -> None:
        with tempfile.TemporaryDirectory() as workdir:
            for argv in (
                ("status",),
                ("members",),
                ("leader",),
                ("wait",),
                ("kill", "p1"),
                ("restart", "p1"),
            ):
                code, _, err = run(*argv, POSTGRES_CLUSTER_DIR=f"{workdir}/none")
                self.assertEqual(code, 1, argv)
                self.assertIn(f"no cluster in {workdir}/none (run 'up')", err)

    def test_down_never_removes_a_directory_it_did_not_make(self) -> None:
        with tempfile.TemporaryDirectory() as workdir:
            Path(workdir, "precious").write_text("keep me")
            code, _, err = run("down", POSTGRES_CLUSTER_DIR=workdir, POSTGRES_CLUSTER_NAME=f"t{os.getpid()}x")
            self.assertEqual(code, 0)
            self.assertIn("not a cluster directory of this script; not removing it", err)
            self.assertTrue(Path(workdir, "precious").exists())

    def test_down_removes_its_own_directory_when_nothing_runs(self) -> None:
        with tempfile.TemporaryDirectory() as workdir:
            cluster = Path(workdir, "cluster")
            (cluster / "p1").mkdir(parents=True)
            (cluster / ".postgres-cluster").touch()
            code, _, err = run("down", POSTGRES_CLUSTER_DIR=str(cluster))
            self.assertEqual((code, err), (0, "postgres-cluster: cluster is down\n"))
            self.assertFalse(cluster.exists())

    def test_a_directory_it_did_not_make_is_never_taken(self) -> None:
        with tempfile.TemporaryDirectory() as workdir:
            Path(workdir, "precious").write_text("keep me")
            with self.assertRaisesMessage(
                Refused, "is not a cluster directory of this script; refusing to use it"
            ):
                Nodes(env_of(POSTGRES_CLUSTER_DIR=workdir)).dir_ensure()
            self.assertEqual(os.listdir(workdir), ["precious"])


class PostgresClusterTests(SimpleTestCase):
    def test_a_private_cluster_reads_its_names_and_urls_from_its_environment(self) -> None:
        cluster = PostgresCluster.private(name="beans-t1", nodes=2, synchronous=False)
        env = cluster.env
        self.assertEqual(cluster.nodes, ("p1", "p2"))
        self.assertEqual(env["POSTGRES_CLUSTER_SYNCHRONOUS"], "off")
        self.assertTrue(env["POSTGRES_CLUSTER_DIR"].endswith("/beans-t1-postgres-cluster"))
        port = int(env["POSTGRES_CLUSTER_PG_PORT"])
        self.assertIn(f"@127.0.0.1:{port},127.0.0.1:{port + 1}/beans?", cluster.urls())
        self.assertTrue(cluster.node_url("p2", dbname="x").endswith(f"@127.0.0.1:{port + 1}/x"))
        self.assertIn(f"port={port},{port + 1} ", cluster.conninfo())
