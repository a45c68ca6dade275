"""The address policy of document fetches, and URL redaction: properties over every address
of each refused network, and over any URL."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from service.config import ConfigError, Settings
from service.core.addresses import (
    METADATA_ADDRESSES,
    AddressPolicy,
    IPAddress,
    IPNetwork,
    destination,
)
from service.core.urls import UNPARSABLE, redacted_url

NO_LIST = AddressPolicy()

REFUSED_NETWORKS = {
    "0.0.0.0/8": "unspecified",
    "10.0.0.0/8": "private",
    "100.64.0.0/10": "shared address space",
    "127.0.0.0/8": "loopback",
    "169.254.0.0/16": "link-local",
    "172.16.0.0/12": "private",
    "192.168.0.0/16": "private",
    "192.0.2.0/24": "reserved",
    "198.18.0.0/15": "reserved",
    "224.0.0.0/4": "multicast",
    "240.0.0.0/4": "reserved",
    "::1/128": "loopback",
    "::/128": "unspecified",
    "fc00::/7": "private",
    "fe80::/10": "link-local",
    "ff00::/8": "multicast",
    "2001:db8::/32": "reserved",
    "100::/64": "reserved",
}


def in_network(network: IPNetwork) -> st.SearchStrategy[IPAddress]:
    first, last = int(network.network_address), int(network.broadcast_address)
    kind = IPv4Address if network.version == 4 else IPv6Address
    return st.integers(first, last).map(kind)


@st.composite
def refused(draw: st.DrawFn, version: int | None = None) -> tuple[IPAddress, str]:
    """An address of one of the refused networks (of IP `version`, if given), and why."""
    networks = [
        (ip_network(n), reason)
        for n, reason in sorted(REFUSED_NETWORKS.items())
        if version is None or ip_network(n).version == version
    ]
    network, reason = draw(st.sampled_from(networks))
    return draw(in_network(network)), reason


def wrapped(address: IPv4Address, form: str) -> IPv6Address:
    """`address` as an IPv6 address that reaches it."""
    value = int(address)
    if form == "mapped":
        return IPv6Address((0xFFFF << 32) | value)
    if form == "nat64":
        return IPv6Address((0x64FF9B << 96) | value)
    return IPv6Address((0x2002 << 112) | (value << 80))  # 6to4


@given(refused())
def test_every_address_of_a_refused_network_is_refused_and_says_why(case: tuple[IPAddress, str]):
    address, reason = case
    verdict = NO_LIST.check(address, host="docs.example.com")
    assert not verdict.allowed
    assert reason in verdict.reason or address in METADATA_ADDRESSES


@given(refused(version=4), st.sampled_from(["mapped", "nat64", "6to4"]))
def test_an_ipv6_form_of_a_refused_ipv4_address_is_refused(
    case: tuple[IPv4Address, str], form: str
):
    address, reason = case
    verdict = NO_LIST.check(wrapped(address, form))
    assert not verdict.allowed
    assert reason in verdict.reason or address in METADATA_ADDRESSES
    assert destination(wrapped(address, form)) == address


@given(st.integers(0, 2**32 - 1).map(IPv4Address) | st.integers(0, 2**128 - 1).map(IPv6Address))
def test_what_ipaddress_calls_not_global_is_refused(address: IPAddress):
    if not destination(address).is_global:
        assert not NO_LIST.check(address).allowed


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_a_public_address_is_allowed(address: str):
    assert NO_LIST.check(ip_address(address)).allowed


@pytest.mark.parametrize(
    "address", ["169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254", "100.100.100.200"]
)
def test_the_metadata_addresses_are_refused_whatever_the_allow_list_says(address: str):
    everything = AddressPolicy.from_entries(["0.0.0.0/0", "::/0", "metadata.internal"])
    verdict = everything.check(ip_address(address), host="metadata.internal")
    assert not verdict.allowed
    assert "metadata" in verdict.reason


def test_a_zone_does_not_hide_an_address():
    assert not NO_LIST.check(ip_address("fd00:ec2::254%eth0")).allowed
    assert "metadata" in NO_LIST.check(ip_address("fd00:ec2::254%eth0")).reason


@given(in_network(ip_network("10.20.0.0/16")))
def test_an_allowed_network_lets_its_addresses_through_and_no_others(address: IPAddress):
    policy = AddressPolicy.from_entries(["10.20.0.0/16"])
    assert policy.check(address).allowed
    assert policy.check(wrapped(address, "mapped")).allowed  # type: ignore[arg-type]
    assert not policy.check(IPv4Address(int(address) ^ (1 << 16))).allowed  # 10.21.x.x


def test_an_allowed_host_name_is_fetched_whatever_it_resolves_to_and_only_it():
    policy = AddressPolicy.from_entries(["Docs.Corp.Example.", "*.print.example"])
    loopback = ip_address("127.0.0.1")
    assert policy.check(loopback, host="docs.corp.example").allowed
    assert policy.check(loopback, host="a.b.print.example").allowed
    assert not policy.check(loopback, host="print.example").allowed  # *. is the names under
    assert not policy.check(loopback, host="evil-docs.corp.example").allowed
    assert not policy.check(loopback, host="docs.corp.example.evil").allowed
    assert not policy.check(loopback).allowed


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("10.1.2.3/8", "host bits set"),
        ("0x7f000001", "looks like an address"),
        ("2130706433", "looks like an address"),
        ("127.1", "looks like an address"),
        ("0177.0.0.1", "looks like an address"),
        ("dökumente.example", "xn--"),
        ("http://docs.example", "neither a network"),
        ("docs.example:8080", "neither a network"),
    ],
)
def test_an_allow_list_entry_that_is_not_a_name_or_a_network_is_refused(entry: str, says: str):
    with pytest.raises(ValueError, match=says):
        AddressPolicy.from_entries([entry])


def test_allow_list_entries_in_every_accepted_form():
    policy = AddressPolicy.from_entries(
        ["", " 192.0.2.7 ", "[::1]", "fd12::/64", "xn--dkumente-q9a.example"]
    )
    assert policy.check(ip_address("192.0.2.7")).allowed
    assert not policy.check(ip_address("192.0.2.8")).allowed
    assert policy.check(ip_address("::1")).allowed
    assert policy.check(ip_address("fd12::5")).allowed
    assert policy.allows_host("XN--DKUMENTE-Q9A.example")


# --- URL redaction --------------------------------------------------------------------------

SECRET = st.text(alphabet="QWXYZ", min_size=3, max_size=12)  # no host or path has these
PLAIN = st.text(alphabet="abcdefghijklmnop0123456789-.", min_size=1, max_size=20)
PATH = st.lists(st.text(alphabet="abcdefghijklmnop0123456789-._~%", max_size=10), max_size=4)


@given(
    scheme=st.sampled_from(["http", "https", "HTTP", "ftp", "file"]),
    user=SECRET,
    password=st.none() | SECRET,
    host=PLAIN,
    port=st.none() | st.integers(1, 65535),
    path=PATH,
    query=st.none() | SECRET,
    fragment=st.none() | SECRET,
)
@example(
    scheme="http",
    user="QQQ",
    password="WWW",  # noqa: S106 - a made-up secret the test looks for
    host="h",
    port=None,
    path=[],
    query=None,
    fragment=None,
)
def test_a_url_redacts_to_its_server_and_path_without_userinfo_or_query(
    scheme: str,
    user: str,
    password: str | None,
    host: str,
    port: int | None,
    path: list[str],
    query: str | None,
    fragment: str | None,
):
    userinfo = user if password is None else f"{user}:{password}"
    netloc = host if port is None else f"{host}:{port}"
    url = f"{scheme}://{userinfo}@{netloc}/{'/'.join(path)}"
    url += "" if query is None else f"?token={query}"
    url += "" if fragment is None else f"#{fragment}"

    shown = redacted_url(url)

    assert shown == f"{scheme.lower()}://{netloc}/{'/'.join(path)}"
    for secret in (user, password, query, fragment):
        assert secret is None or secret not in shown


@given(st.text(max_size=300))
@example("http://user:pa/ss@host/")
@example("http://user:pw\\x@host/")
@example("http:/user:pw@host")
@example("mailto:someone@example.com")
@example("http://host/a@b/c?x#y")
def test_any_text_redacts_to_something_with_no_userinfo_query_or_fragment(text: str):
    shown = redacted_url(text)
    assert not {"@", "?", "#"} & set(shown)
    assert len(shown.encode()) <= 500
    shown.encode("utf-8")  # no lone surrogate


def test_what_a_redacted_url_keeps():
    assert redacted_url("https://u:p@Docs.Example:8443/a/b.pdf?sig=1#p2") == (
        "https://Docs.Example:8443/a/b.pdf"
    )
    assert redacted_url("http://[::1]:80/x") == "http://[::1]:80/x"
    assert redacted_url("http://host/a@b/c") == "http://host/…"
    assert redacted_url("no scheme at all") == UNPARSABLE
    assert redacted_url("http://h/" + "x" * 1000).endswith("…")


# --- DOCUMENT_ALLOW_HOSTS -------------------------------------------------------------------


def test_the_allow_list_is_read_from_a_comma_separated_variable(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DOCUMENT_ALLOW_HOSTS", " docs.corp.example, 10.1.0.0/16 ,,*.print.example")
    assert Settings.from_env().document_allow_hosts == (
        "docs.corp.example",
        "10.1.0.0/16",
        "*.print.example",
    )
    monkeypatch.delenv("DOCUMENT_ALLOW_HOSTS")
    assert Settings.from_env().document_allow_hosts == ()


def test_a_bad_allow_list_entry_stops_the_start_and_is_named(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DOCUMENT_ALLOW_HOSTS", "docs.corp.example,0x7f000001")
    with pytest.raises(ConfigError, match=r"DOCUMENT_ALLOW_HOSTS: .*'0x7f000001' looks like"):
        Settings.from_env()
