"""What the cluster runs on: PostgreSQL's server from Debian, Patroni and etcd (installed as root when missing)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from harness.postgres_cluster.settings import Refused, is_root, log

SERVERS = Path("/usr/lib/postgresql")


def version_key(version: str) -> tuple[int, ...]:
    """``sort -V`` for PostgreSQL's version directories (``9.6`` < ``15`` < ``16``)."""
    return tuple(int(part) for part in re.findall(r"\d+", version))


def bin_dir(chosen: str = "") -> Path:
    """PostgreSQL's bin directory: ``chosen`` (POSTGRES_CLUSTER_BIN_DIR), else the newest
    /usr/lib/postgresql/<version>/bin with a server."""
    if chosen:
        if not os.access(Path(chosen) / "postgres", os.X_OK):
            raise Refused(f"no postgres in POSTGRES_CLUSTER_BIN_DIR={chosen}")
        return Path(chosen)
    versions = [server.parent.parent.name for server in SERVERS.glob("*/bin/postgres")]
    if not versions:
        raise Refused("no PostgreSQL server in /usr/lib/postgresql: apt-get install postgresql")
    return SERVERS / max(versions, key=version_key) / "bin"


def apt(argv: list[str]) -> tuple[int, str]:
    """Run apt-get without questions; its exit code and output."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    return done.returncode, done.stdout + done.stderr


def packages_ensure() -> None:
    """Install Patroni and etcd when missing (as root), or say what to install."""
    missing = []
    if not (shutil.which("patroni") and shutil.which("patronictl")):
        missing.append("patroni")
    if not shutil.which("etcd"):
        missing.append("etcd-server")
    if not shutil.which("psql"):
        missing.append("postgresql-client")
    if not missing:
        return
    install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if not is_root():
        raise Refused(f"missing Debian packages: {' '.join(missing)} (as root: {' '.join(install)})")
    log(f"installing {' '.join(missing)}")
    # Debian's etcd-server enables an etcd service on 2379/2380 (policy-rc.d may keep it from
    # starting); either way it is left alone: this cluster's etcd has its own ports and data.
    code, output = apt(install)
    if code != 0:
        output += apt(["apt-get", "update"])[1]
        code, more = apt(install)
        output += more
    if code != 0:
        sys.stderr.write("".join(output.splitlines(keepends=True)[-20:]))
        raise Refused(f"apt-get install {' '.join(missing)} failed")
    if not (shutil.which("patroni") and shutil.which("etcd")):
        raise Refused("patroni or etcd still missing after apt-get install")
