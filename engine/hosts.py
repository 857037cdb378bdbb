"""Which ``Host`` header values the gateway answers: a defence against DNS rebinding.

A web page on ``evil.example`` can make its own name resolve to 127.0.0.1 and
then drive, from the victim's browser, a gateway listening on the victim's
loopback (spending the operator's provider keys, reading conversations). The
browser still sends ``Host: evil.example``; answering only the names the
gateway is meant to be reached by closes the hole. Jupyter, the Docker and
Kubernetes dashboards and Vite's dev server check it the same way.

Default (``allowed_hosts`` unset): when the server listens on a loopback
address, only loopback names (``localhost``, ``*.localhost``, ``127.0.0.0/8``,
``::1``); when it listens on any other address, any name (the operator put it
on a network; list the names to check them there too). ``["*"]`` allows any.

Sans-IO: no aiohttp here; the middleware in ``app.py`` asks :meth:`HostCheck.allows`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["HostCheck", "is_loopback", "host_check"]

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def _hostname(value: str) -> str:
    """The name part of a ``Host`` header value, lower-cased, without port or trailing dot."""
    value = value.lower()
    if value.startswith("["):  # [::1]:8080
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
        value = value.partition(":")[0]
    return value.rstrip(".")


def is_loopback(name: str) -> bool:
    """True for names and addresses that can only mean this machine."""
    name = _hostname(name)
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class HostCheck:
    """An allow-list of host names; ``allows(None)`` (no Host header, HTTP/1.0) is True.

    Entries are names or addresses without port; ``.example.com`` also allows
    every sub-domain of ``example.com``; ``loopback`` stands for every loopback
    name and address.
    """

    __slots__ = ("_exact", "_loopback", "_suffixes")

    def __init__(self, names: Iterable[str]) -> None:
        exact: set[str] = set()
        suffixes: list[str] = []
        loopback = False
        for raw in names:
            name = _hostname(raw)
            if name == "loopback":
                loopback = True
            elif name.startswith("."):
                suffixes.append(name)
                exact.add(name[1:])
            elif name:
                exact.add(name)
        if loopback:
            # The names clients use, matched without parsing an address.
            exact.update(_LOOPBACK_NAMES, ("127.0.0.1", "::1"))
        self._exact = frozenset(exact)
        self._suffixes = tuple(suffixes)
        self._loopback = loopback

    def allows(self, host: str | None) -> bool:
        if host is None:
            # No Host header: not a browser (they always send one), so not rebinding.
            return True
        name = _hostname(host)
        if name in self._exact or (self._suffixes and name.endswith(self._suffixes)):
            return True
        return self._loopback and is_loopback(name)


def host_check(allowed: list[str] | None, bind_host: str) -> HostCheck | None:
    """The check for a server listening on ``bind_host``; ``None`` means any host is answered."""
    if allowed is None:
        return HostCheck(["loopback"]) if is_loopback(bind_host) else None
    if "*" in allowed:
        return None
    return HostCheck(allowed)
