"""Whether `pneumoscan serve --host H` would be reachable from other machines, decided before anything binds.

A host is loopback when every address it resolves to is a loopback address (127.0.0.0/8, ::1): `127.0.0.1`,
`::1` and `localhost` are; `0.0.0.0` and `::` (every interface), a LAN address, or a name with any
non-loopback address are not. Serving a non-loopback host without API keys would let anyone who can reach
the port use the model, so `serve` refuses it (pneumoscan.cli.commands.serve).
"""

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

from pneumoscan.errors import PneumoscanError

Resolver = Callable[..., list[Any]]


def addresses(host: str, resolve: Resolver | None = None) -> list[str]:
    """The IP addresses `host` stands for: itself if it is one (no lookup), else what the resolver gives
    (socket.getaddrinfo, looked up at call time)."""
    bare = host.strip().removeprefix("[").removesuffix("]")
    try:
        return [str(ipaddress.ip_address(bare))]
    except ValueError:
        pass
    if not bare:
        return ["0.0.0.0"]  # an empty host binds every interface
    try:
        found = (resolve or socket.getaddrinfo)(bare, None, 0, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:
        raise PneumoscanError(f"--host {host}: cannot resolve it ({error})") from None
    return sorted({str(info[4][0]).split("%")[0] for info in found})


def is_loopback(host: str, resolve: Resolver | None = None) -> bool:
    """True when every address of `host` is a loopback address (and it has at least one)."""
    found = addresses(host, resolve)
    return bool(found) and all(ipaddress.ip_address(a).is_loopback for a in found)


def check_exposure(host: str, keys_given: bool, resolve: Resolver | None = None) -> None:
    """Refuse, in one line, to serve a non-loopback host without API keys."""
    if keys_given or is_loopback(host, resolve):
        return
    raise PneumoscanError(
        f"--host {host} is reachable from other machines and no API keys are set: give --api-keys FILE (make "
        "one with `pneumoscan keys new --file FILE`) or set PNEUMOSCAN_API_KEYS, or serve on 127.0.0.1 behind a "
        "TLS reverse proxy (docs/serving.md, 'Keys, rate limits and exposure')")


def check_origins(origins: list[str]) -> tuple[str, ...]:
    """CORS origins as a browser sends them (`scheme://host[:port]`, no path, no trailing slash), or `*`."""
    for origin in origins:
        scheme, sep, rest = origin.partition("://")
        if origin != "*" and (scheme not in ("http", "https") or not sep or not rest or "/" in rest
                              or any(c.isspace() for c in rest)):
            raise PneumoscanError(f"--cors-origin {origin!r}: give an origin as a browser sends it, "
                                  "scheme://host[:port] without a path or trailing slash (e.g. "
                                  "https://app.example.org), or *")
    return tuple(dict.fromkeys(origins))
