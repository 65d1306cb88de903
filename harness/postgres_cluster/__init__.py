"""A private PostgreSQL HA cluster on this host: p1..p3 under Patroni, one etcd, for the failover tests.

    python -m harness.postgres_cluster up                start etcd and every node, wait until all stream, print the URL
    python -m harness.postgres_cluster down              stop every node and etcd, remove the cluster directory
    python -m harness.postgres_cluster status            members (role, state, timeline, lag), then leader and sync standby
    python -m harness.postgres_cluster members           the same, one "NAME ROLE STATE TIMELINE LAG" line per member
    python -m harness.postgres_cluster leader            print the current leader (p1, p2 ...); fails when there is none
    python -m harness.postgres_cluster kill NODE         SIGKILL the node's postmaster only; its Patroni lives on
    python -m harness.postgres_cluster kill-patroni NODE SIGKILL the node's Patroni and then its postmaster (the whole node)
    python -m harness.postgres_cluster restart NODE      start the node's Patroni if it is not running, wait until it streams
    python -m harness.postgres_cluster urls [--conninfo] print the libpq multi-host URL (or keyword form) of the primary
    python -m harness.postgres_cluster wait              wait until a leader takes writes (and a sync standby exists)
    (NODE: p1, p2, p3 or 1, 2, 3, or "leader" for the current leader)

Each node has its own PostgreSQL port, Patroni REST API port, data directory, config and logs
under one cluster directory; etcd (one member) has its own client and peer ports and data there
too. Everything listens on 127.0.0.1 only. The system cluster (/etc/postgresql,
/var/lib/postgresql, port 5432, /var/run/postgresql) and Debian's etcd service (2379/2380) are
never touched: sockets go to the cluster directory, and 5432, 2379 and 2380 are refused.
PostgreSQL will not run as root, so as root Patroni, PostgreSQL and etcd run as the `postgres`
OS user, who then owns the cluster directory.

Failover: synchronous_mode (one synchronous standby), ttl 10 s, loop_wait 1 s, retry_timeout 4 s
and primary_start_timeout 0, so a crashed primary fails over to the synchronous standby at
once instead of being restarted in place. A node that comes back rejoins as a replica
(pg_rewind, or a fresh copy when that fails). The application role is a superuser with
trust authentication on 127.0.0.1: this cluster is private and throwaway.

Environment:
  POSTGRES_CLUSTER_DIR          state directory (default /tmp/beans-postgres-cluster)
  POSTGRES_CLUSTER_NAME         Patroni scope (default beans)
  POSTGRES_CLUSTER_NODES        number of nodes (default 3; 2 works too)
  POSTGRES_CLUSTER_PG_PORT      PostgreSQL port of p1; p2, p3 use the next ones (default 5441)
  POSTGRES_CLUSTER_API_PORT     Patroni REST API port of p1, likewise (default 8101)
  POSTGRES_CLUSTER_ETCD_PORT    etcd client port; its peer port is the next one (default 2479)
  POSTGRES_CLUSTER_SYNCHRONOUS  on: synchronous replication (default); off: asynchronous
  POSTGRES_CLUSTER_MAX_FAILOVER_LAG  bytes a replica may lag and still be promoted (default 1 MiB)
  POSTGRES_CLUSTER_DB           database created for the application (default beans)
  POSTGRES_CLUSTER_APP_USER     superuser role created for the application (default: this OS user)
  POSTGRES_CLUSTER_BIN_DIR      PostgreSQL's bin directory (default: newest /usr/lib/postgresql/*/bin)
  POSTGRES_CLUSTER_TIMEOUT_S    longest wait for any one step (default 90)

The modules, standard library only (no Django): ``settings`` (the environment: names, ports,
places, URLs, what is refused), ``files`` (the Patroni, patronictl and post-bootstrap files, as
text), ``install`` (PostgreSQL's bin directory, Patroni and etcd from Debian), ``procs``
(finding and stopping processes through /proc), ``nodes`` (``Nodes``: every command's work),
``cli`` (the command line) and ``cluster`` (``PostgresCluster``, what the tests and the chaos
run hold: it runs the command line in a subprocess and parses what it prints).
"""

from harness.postgres_cluster.cluster import PostgresCluster

__all__ = ["PostgresCluster"]
