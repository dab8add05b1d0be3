"""Free TCP ports for replicas.

A port is "free" when we can bind it ourselves (with ``SO_REUSEADDR``, as the
inference servers do, so a port in TIME_WAIT after a crash still counts as
free and a restarted replica keeps its address).  Between our check and the
server's own bind another program may take the port; the server then exits,
and the restart picks a new port.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Collection


def family(host: str) -> socket.AddressFamily:
    """The address family of an IP literal (a host name is not resolved here)."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _bind(host: str, port: int) -> int | None:
    with socket.socket(family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return None
        return int(sock.getsockname()[1])


def is_free(host: str, port: int) -> bool:
    return _bind(host, port) is not None


def pick_port(host: str, preferred: int | None, taken: Collection[int]) -> int:
    """``preferred`` if it is free and not in ``taken``, else a new free port the kernel chooses."""
    if preferred and preferred not in taken and is_free(host, preferred):
        return preferred
    for _ in range(100):
        port = _bind(host, 0)
        if port is not None and port not in taken:
            return port
    raise OSError(f"no free TCP port on {host}")


def url_host(host: str) -> str:
    """``host`` as it appears in a URL (IPv6 literals in brackets)."""
    return f"[{host}]" if ":" in host else host
