"""A TCP proxy that can go silent: a network partition without a reset, on loopback only.

Point a process at ``proxy.address`` instead of the real server and call
``partition()``: from then on no byte moves in either direction, yet every
connection stays open and no RST or FIN is sent, as with a dropped route, a dead
NAT entry or a frozen VM. New connections are accepted and then hear nothing
either. ``heal()`` lets the bytes flow again: what was sent meanwhile is delivered
late and intact (the proxy only stopped reading, as TCP retransmission would
deliver it), and a side that gave up on its connection meanwhile is seen to have
closed it only then.

By default the sockets between the proxy and each side stay healthy at the TCP
level, so the kernel's keepalives and retransmission timeouts cannot notice the
partition: only the application's own deadlines (AMQP heartbeats, confirm and
read timeouts, the database's idle-in-transaction timeout) can. With
``drop_packets=True`` the partition also drops, with iptables, every packet to and
from the proxy's own port, as a real partition between the client and the proxy
would: then the client's TCP keepalives and ``tcp_user_timeout`` see it too (the
proxy's side towards the server stays up, so the server sees a silent client).
The rules name only that port and are removed on ``heal()`` and ``close()``.

``url_via`` points a broker or database URL at proxies; ``database_hosts`` lists the hosts a
(multi-host) PostgreSQL URL names, one proxy each.
"""

import logging
import os
import select
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from contextlib import suppress
from urllib.parse import urlsplit, urlunsplit

logger = logging.getLogger(__name__)

_POLL_S = 0.05


class SilentProxy:
    """Forward ``127.0.0.1:<port>`` to ``upstream``; ``partition()`` makes it drop silent."""

    def __init__(
        self, upstream_host: str, upstream_port: int, *, name: str = "proxy", drop_packets: bool = False
    ) -> None:
        if drop_packets and shutil.which("iptables") is None:
            raise RuntimeError("drop_packets needs iptables (apt-get install iptables) and root")
        self.upstream = (upstream_host, upstream_port)
        self.name = name
        self.drop_packets = drop_packets
        self._rules_on = False
        self._flowing = threading.Event()
        self._flowing.set()
        self._refusing = threading.Event()
        self._closing = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self._listener.settimeout(_POLL_S)
        self.port = int(self._listener.getsockname()[1])
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.connections = 0

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def partitioned(self) -> bool:
        return not self._flowing.is_set()

    def start(self) -> "SilentProxy":
        self._spawn(self._accept_loop)
        return self

    def partition(self) -> None:
        """Stop moving bytes, in both directions, on every connection (new ones too)."""
        self._flowing.clear()
        if self.drop_packets and not self._rules_on:
            self._iptables("-I")
            self._rules_on = True
        logger.warning("%s: partitioned (silent drop, connections kept open)", self.name)

    def refuse(self) -> None:
        """Be a server that is down: close every connection, and each new one as it comes."""
        self._refusing.set()
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            with suppress(OSError):
                sock.close()
        logger.warning("%s: down (connections closed, new ones refused)", self.name)

    def heal(self) -> None:
        if self._rules_on:
            self._iptables("-D")
            self._rules_on = False
        self._refusing.clear()
        self._flowing.set()
        logger.warning("%s: healed", self.name)

    def _iptables(self, action: str) -> None:
        """Add (``-I``) or delete (``-D``) the rules that drop this proxy's packets, both ways."""
        for match in (["--dport", str(self.port)], ["--sport", str(self.port)]):
            subprocess.run(
                ["iptables", "-w", action, "INPUT", "-i", "lo", "-p", "tcp", *match, "-j", "DROP"],
                check=True,
                capture_output=True,
                timeout=30,
            )

    def close(self) -> None:
        """Close every socket and stop every thread (a test's cleanup)."""
        if self._rules_on:
            self.heal()
        self._closing.set()
        self._flowing.set()
        with suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with suppress(OSError):
                sock.close()
        for thread in self._threads:
            thread.join(timeout=2)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name=f"{self.name}-pump")
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._refusing.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            self.connections += 1
            with self._lock:
                self._sockets.update((client, server))
            self._spawn(self._pump, client, server)
            self._spawn(self._pump, server, client)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not self._closing.is_set():
                if not self._flowing.wait(_POLL_S):
                    continue  # partitioned: leave the bytes in the kernel's buffers
                readable, _, _ = select.select([source], [], [], _POLL_S)
                if not readable or not self._flowing.is_set():
                    continue
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except (OSError, ValueError):  # ValueError: closed under us by close()
            pass
        finally:
            for sock in (source, sink):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with suppress(OSError):
                    sock.close()
            with self._lock:
                self._sockets.discard(source)
                self._sockets.discard(sink)


def url_via(url: str, *ports: int) -> str:
    """``url`` with its hosts and ports replaced by ``127.0.0.1:port`` (user, password, vhost kept).

    Several ports make a libpq multi-host URL (``127.0.0.1:p1,127.0.0.1:p2``), one per host of a
    database cluster's URL.
    """
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
    return urlunsplit(parts._replace(netloc=f"{auth}@{hosts}" if auth else hosts))


def database_hosts(url: str) -> list[tuple[str, int]]:
    """The (host, port) pairs of a PostgreSQL URL, several for a multi-host one (libpq's parser).

    A socket directory counts as 127.0.0.1 at the same port: the proxies speak TCP.
    """
    from psycopg.conninfo import conninfo_to_dict

    from project.environment import libpq_url

    params = conninfo_to_dict(libpq_url(url))
    hosts = str(params.get("host") or "127.0.0.1").split(",")
    ports = str(params.get("port") or "5432").split(",")
    if len(ports) == 1:
        ports *= len(hosts)
    return [
        ("127.0.0.1" if host.startswith("/") else host, int(port))
        for host, port in zip(hosts, ports, strict=True)
    ]


def partition_drops_packets() -> bool:
    """Whether a proxy can also drop its packets (iptables, as root), as the tests do."""
    return os.geteuid() == 0 and shutil.which("iptables") is not None
