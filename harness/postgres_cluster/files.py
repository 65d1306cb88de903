"""The files a cluster runs from, as text: each node's Patroni config, patronictl's, the post-bootstrap script."""

from pathlib import Path

from harness.postgres_cluster.settings import HOST, REPLICATION_USER, Settings

# Fixed passwords: authentication is trust on 127.0.0.1 anyway; Patroni wants them set.
SUPERUSER_PASSWORD = "postgres-cluster-superuser"  # noqa: S105 - a throwaway cluster's, trust auth
REPLICATION_PASSWORD = "postgres-cluster-replicator"  # noqa: S105 - likewise


def patroni_config(settings: Settings, i: int, bin_dir: Path) -> str:
    """Node i's ``patroni.yml``."""
    s, name = settings, settings.node_name(i)
    return f"""\
# Written by harness.postgres_cluster for node {name} of cluster {s.name}.
scope: {s.name}
name: {name}
log:
  dir: {s.node_dir(i)}
  level: INFO
  file_num: 2
  file_size: 20000000
restapi:
  listen: {HOST}:{s.api_port(i)}
  connect_address: {HOST}:{s.api_port(i)}
etcd3:
  hosts: {HOST}:{s.etcd_port}
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 4
    maximum_lag_on_failover: {s.max_failover_lag}
    # Fail over at once when the primary's postgres dies, rather than restart it in place.
    primary_start_timeout: 0
    synchronous_mode: {"true" if s.synchronous else "false"}
    synchronous_mode_strict: false
    synchronous_node_count: 1
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        max_connections: 200
        wal_level: replica
        hot_standby: 'on'
        wal_log_hints: 'on'
        max_wal_senders: 10
        max_replication_slots: 10
        wal_keep_size: 128MB
        shared_buffers: 128MB
        fsync: 'on'
        synchronous_commit: 'on'
        logging_collector: 'off'
        log_destination: stderr
        log_line_prefix: '%m [%p] {name} %q%u@%d '
  initdb:
    - encoding: UTF8
    - auth: trust
  post_bootstrap: {s.post_bootstrap}
postgresql:
  listen: {HOST}:{s.pg_port(i)}
  connect_address: {HOST}:{s.pg_port(i)}
  data_dir: {s.data_dir(i)}
  bin_dir: {bin_dir}
  pgpass: {s.node_dir(i)}/pgpass
  # A new replica's copy asks for an immediate checkpoint, not a spread one (minutes).
  basebackup:
    - checkpoint: fast
  use_pg_rewind: true
  remove_data_directory_on_rewind_failure: true
  remove_data_directory_on_diverged_timelines: true
  authentication:
    superuser:
      username: postgres
      password: {SUPERUSER_PASSWORD}
    replication:
      username: {REPLICATION_USER}
      password: {REPLICATION_PASSWORD}
  parameters:
    unix_socket_directories: {s.socket_dir}
  pg_hba:
    - local all all trust
    - host all all {HOST}/32 trust
    - host replication {REPLICATION_USER} {HOST}/32 trust
watchdog:
  mode: 'off'
tags:
  nofailover: false
  noloadbalance: false
  clonefrom: false
  nosync: false
"""


def patronictl_config(settings: Settings) -> str:
    """patronictl's view of the cluster: its scope and etcd."""
    return (
        f"# Written by harness.postgres_cluster: patronictl's view of cluster {settings.name}.\n"
        f"scope: {settings.name}\n"
        "etcd3:\n"
        f"  hosts: {HOST}:{settings.etcd_port}\n"
    )


def post_bootstrap_script(settings: Settings, bin_dir: Path) -> str:
    """Runs once, on the node that bootstraps the cluster, with a superuser connection string:
    the application role (unless it is ``postgres``) and database."""
    role = "" if settings.app_user == "postgres" else f'CREATE ROLE "{settings.app_user}" LOGIN SUPERUSER;\n'
    return (
        "#!/bin/sh\n"
        "# Written by harness.postgres_cluster: the application role and database.\n"
        "set -eu\n"
        f'"{bin_dir / "psql"}" -X -q -v ON_ERROR_STOP=1 -d "$1" <<\'SQL\'\n'
        f"{role}"
        f'CREATE DATABASE "{settings.db}" OWNER "{settings.app_user}";\n'
        "SQL\n"
    )
