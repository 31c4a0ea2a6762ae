"""Which network addresses a worker may download from: public ones only, unless allow-listed.

A URL is user input, and the worker sits inside the network: without a rule, `http://127.0.0.1:6379`,
`http://169.254.169.254/` (cloud metadata), `http://10.0.0.1/` or a public name that resolves to one of
those would make the worker fetch internal resources for the submitter (server-side request forgery).

Refused by default: loopback, private, link-local, shared (100.64/10), multicast, reserved,
unspecified and every other address Python's `ipaddress` does not call global, including such
addresses embedded in IPv6 (IPv4-mapped, 6to4, Teredo, NAT64) and names reserved for local use
(`localhost`, `*.localhost`, `*.local`, `*.internal`, `*.localdomain`, `*.home.arpa`).

`AddressPolicy.vet(host, port, resolver)` is the check made on the address actually connected to: the
name is resolved once, every address is checked, and the caller connects to those addresses only
(never resolving again, so DNS cannot answer differently in between). The resolver is a parameter,
so tests never send a lookup anywhere. It lives in the core because `Settings` parses RALF_URL_ALLOW
into it (standard library only).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# host, port -> the IP addresses (as text) a connection may use, in preference order
Resolver = Callable[[str, int], list[str]]

log = logging.getLogger(__name__)

LOCAL_NAME_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa")
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Special-purpose blocks that Python's `ipaddress` (3.11) still calls global: IETF protocol
# assignments (all of 192.0.0.0/24, e.g. the dummy address 192.0.0.8 of RFC 7600; its two anycast
# services are no media hosts either) and the IPv6 documentation block 3fff::/20 (RFC 9637).
_NOT_PUBLIC = (
    (ipaddress.ip_network("192.0.0.0/24"), "IETF protocol assignments (192.0.0.0/24)"),
    (ipaddress.ip_network("3fff::/20"), "documentation (3fff::/20)"),
)


class AddressRefused(ValueError):
    """The URL's host is, or resolves to, an address downloads may not reach; the message says which."""


def system_resolver(host: str, port: int) -> list[str]:
    """getaddrinfo's TCP addresses for host:port, in its order, without duplicates."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a host written as an IP literal names: dotted quads, IPv6 (brackets removed by the
    caller) and the legacy IPv4 forms C's inet_aton (hence every resolver) accepts: '2130706433',
    '0x7f000001', '0177.0.0.1', '127.1'. None for a name. Parsed locally: no lookup."""
    text = host.strip().removeprefix("[").removesuffix("]").rstrip(".")
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        pass
    if not text or not all(part for part in text.split(".")):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def address_kind(ip: IPAddress) -> str | None:
    """Why `ip` is not a public address ('loopback', 'private', ...), or None when it is one."""
    if isinstance(ip, ipaddress.IPv6Address):
        for inner in _embedded_ipv4(ip):
            kind = address_kind(inner)
            if kind is not None:
                return f"{kind}: {inner} embedded"
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("shared address space (100.64.0.0/10)", isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("site-local", isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local),
        *((kind, ip.version == net.version and ip in net) for net, kind in _NOT_PUBLIC),
    )
    for kind, flag in checks:
        if flag:
            return kind
    if not ip.is_global:
        return "not globally routable"
    return None


def local_name(host: str) -> bool:
    """Names reserved for the local host or network (RFC 6761, 6762, 8375; ICANN's .internal)."""
    name = host.strip().rstrip(".").lower()
    return name == "localhost" or name.endswith(LOCAL_NAME_SUFFIXES)


@dataclass(frozen=True)
class AddressPolicy:
    """Public addresses only, plus what the allow-list opens: networks (CIDR or single addresses) and
    host names (exact, case-insensitive; a name on the list may resolve to any address)."""

    allow_networks: tuple[IPNetwork, ...] = ()
    allow_hosts: frozenset[str] = frozenset()

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> AddressPolicy:
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for entry in entries:
            text = entry.strip()
            if not text:
                continue
            try:
                networks.append(ipaddress.ip_network(text.strip("[]"), strict=False))
            except ValueError:
                if not all(c.isalnum() or c in "-._" for c in text):
                    raise ValueError(f"allow-list entry {entry!r} is neither an address/network nor a host name")
                hosts.add(text.rstrip(".").lower())
        return cls(tuple(networks), frozenset(hosts))

    def host_allowed(self, host: str) -> bool:
        return host.strip().rstrip(".").lower() in self.allow_hosts

    def address_refusal(self, ip: IPAddress) -> str | None:
        """Why a connection to `ip` is refused, or None."""
        if any(ip.version == net.version and ip in net for net in self.allow_networks):
            return None
        kind = address_kind(ip)
        return None if kind is None else f"{ip} is not a public address ({kind})"

    def check_host(self, host: str) -> None:
        """What can be decided without DNS: allow-listed names, IP literals, names reserved for local use."""
        if self.host_allowed(host):
            return
        literal = parse_ip_literal(host)
        if literal is not None:
            reason = self.address_refusal(literal)
            if reason is not None:
                raise AddressRefused(f"host {host!r} refused: {reason} (set RALF_URL_ALLOW to open it)")
            return
        if local_name(host):
            raise AddressRefused(f"host {host!r} refused: a name reserved for local hosts (set RALF_URL_ALLOW to open it)")

    def vet(self, host: str, port: int, resolver: Resolver) -> list[str]:
        """The addresses a connection to host:port may use: all of them allowed, or AddressRefused.

        A name with any forbidden address is refused as a whole (one internal answer is enough
        to make a name suspect, and round-robin would otherwise reach it sometimes)."""
        self.check_host(host)
        literal = parse_ip_literal(host)
        if literal is not None:
            return [str(literal)]
        try:
            addresses = resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise OSError(f"cannot resolve {host!r}: {exc}") from None
        if not addresses:
            raise OSError(f"cannot resolve {host!r}: no addresses")
        if self.host_allowed(host):
            return addresses
        for text in addresses:
            reason = self.address_refusal(ipaddress.ip_address(text.split("%", 1)[0]))
            if reason is not None:
                # What an internal name resolves to is the operator's business (this log), not the
                # submitter's: the message says only that the address is not allowed.
                log.warning("host %r refused: it resolves to %s", host, reason)
                raise AddressRefused(f"host {host!r} refused: its address is not allowed (set RALF_URL_ALLOW to open it)")
        return addresses
