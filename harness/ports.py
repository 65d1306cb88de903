"""Free TCP ports on 127.0.0.1 (one for a web tier, a run of consecutive ones for a cluster's nodes), and taken ones."""

import socket


class NoFreePorts(RuntimeError):
    """No run of consecutive free ports in the range asked for."""


def free_port() -> int:
    """A port free on 127.0.0.1 now (the kernel's pick)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_free(port: int) -> bool:
    """Whether ``port`` can be bound on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_in_use(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def free_ports(count: int, *, start: int, stop: int, offset: int = 0) -> int:
    """Return the first of ``count`` consecutive ports in [start, stop] free on 127.0.0.1.

    The search begins ``offset`` ports in and wraps around.
    """
    bases = list(range(start, stop - count + 2))
    offset %= len(bases)
    for base in bases[offset:] + bases[:offset]:
        if all(port_free(port) for port in range(base, base + count)):
            return base
    raise NoFreePorts(f"no {count} consecutive free ports between {start} and {stop}")
