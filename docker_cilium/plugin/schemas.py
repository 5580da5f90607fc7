"""One schema per libnetwork request, checked before any handler runs.

As kuryr-libnetwork does with JSON-Schema, but with a small checker of our
own: dockerd's Go encoder sends ``null`` for every nil map or slice, which
generic schema libraries make verbose to express, and the error must name the
exact field path (``IPv4Data[0].Gateway``) for the user reading dockerd's
message. Unknown fields are tolerated (logged): the protocol belongs to
dockerd, and a newer dockerd adding a field must not break networking.

Each request is a TypedDict named after libnetwork's Go struct (requests with
the same fields share one), its fields spelled as on the wire and annotated with the ``Field`` that checks them, so
the type the drivers see and the check that admits it are one declaration.
``parse_request`` checks a body and builds the typed request: every declared
field present, ``null`` or absent ones replaced by their empty value, unknown
ones dropped (and reported).
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import Annotated, Any, Callable, TypedDict, TypeVar, cast, get_args, get_type_hints

from docker_cilium.errors import BadRequest

Check = Callable[[str, Any], None]
R = TypeVar("R")


class SchemaError(BadRequest):
    """Names the offending field; turned into a 400 {"Err": ...} reply."""


@dataclass(frozen=True)
class Field:
    kind: type | tuple[type, ...]
    required: bool = False
    nullable: bool = False
    check: Check | None = None
    item: type | None = None  # the request TypedDict of list items / a nested object


def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", dict: "an object", list: "an array"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def non_empty(path: str, value: Any) -> None:
    if not value:
        raise SchemaError(f"{path} must not be empty")


def cidr_or_empty(path: str, value: Any) -> None:
    if value == "":
        return
    try:
        ipaddress.ip_interface(value)
    except ValueError:
        raise SchemaError(f"{path}: {value!r} is not an address in CIDR form (e.g. 10.15.0.2/32)") from None
    if "/" not in value:
        raise SchemaError(f"{path}: {value!r} lacks a prefix length (e.g. 10.15.0.2/32)")


def ip_or_cidr_or_empty(path: str, value: Any) -> None:
    if value == "":
        return
    try:
        ipaddress.ip_interface(value)
    except ValueError:
        raise SchemaError(f"{path}: {value!r} is not an IP address") from None


def mac_or_empty(path: str, value: Any) -> None:
    if value == "":
        return
    parts = value.split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts):
        raise SchemaError(f"{path}: {value!r} is not a MAC address")
    if int(parts[0], 16) & 1 or value.strip("0:") == "":  # the group bit: multicast or broadcast
        raise SchemaError(f"{path}: {value} is not a unicast MAC address a container can hold")


def _bool_strict(kind: type | tuple[type, ...], value: Any) -> bool:
    # bool is a subclass of int in Python: don't let true pass as an integer.
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False
    return isinstance(value, kinds)


@functools.cache
def schema_of(request: type) -> dict[str, Field]:
    """The checks a request TypedDict declares: ``{wire name: Field}``."""
    hints = get_type_hints(request, include_extras=True)
    return {name: next(a for a in get_args(hint) if isinstance(a, Field)) for name, hint in hints.items()}


def validate(schema: dict[str, Field], body: Any, path: str = "") -> list[str]:
    """Raise SchemaError for the first bad field; return unknown field paths."""
    if not isinstance(body, dict):
        raise SchemaError(f"{path or 'request body'} must be a JSON object")
    unknown = [f"{path}{k}" for k in body if k not in schema]
    for name, spec in schema.items():
        fpath = f"{path}{name}"
        if name not in body:
            if spec.required:
                raise SchemaError(f"{fpath} is required")
            continue
        value = body[name]
        if value is None:
            if spec.nullable:
                continue
            raise SchemaError(f"{fpath} must be {_type_name(spec.kind)}, not null")
        if not _bool_strict(spec.kind, value):
            raise SchemaError(f"{fpath} must be {_type_name(spec.kind)}, got {type(value).__name__}")
        if spec.check:
            spec.check(fpath, value)
        if spec.item is not None:
            if isinstance(value, list):
                for i, item in enumerate(value):
                    unknown += validate(schema_of(spec.item), item, f"{fpath}[{i}].")
            elif isinstance(value, dict):
                unknown += validate(schema_of(spec.item), value, f"{fpath}.")
    return unknown


def _empty(spec: Field) -> Any:
    """What an absent or ``null`` field means: the empty value of its type."""
    if isinstance(spec.kind, tuple):
        return None
    if spec.kind is dict and spec.item is not None:
        return build(spec.item, {})
    return spec.kind()


def build(request: type[R], body: dict[str, Any]) -> R:
    """A validated body as ``request``: every declared field, nothing else."""
    out: dict[str, Any] = {}
    for name, spec in schema_of(request).items():
        value = body.get(name)
        if value is None:
            value = _empty(spec)
        elif spec.item is not None:
            value = [build(spec.item, v) for v in value] if isinstance(value, list) else build(spec.item, value)
        out[name] = value
    return cast(R, out)


def parse_request(request: type[R], body: Any) -> tuple[R, list[str]]:
    """Check ``body`` against ``request``; the typed request and unknown field paths."""
    unknown = validate(schema_of(request), body)
    return build(request, body), unknown


NETWORK_ID = Field(str, required=True, check=non_empty)
ENDPOINT_ID = Field(str, required=True, check=non_empty)
POOL_ID = Field(str, required=True, check=non_empty)
OPTIONS = Field(dict, nullable=True)
Options = Annotated[dict[str, Any], OPTIONS]


class IPAMData(TypedDict):
    AddressSpace: Annotated[str, Field(str)]
    Pool: Annotated[str, Field(str, check=ip_or_cidr_or_empty)]
    Gateway: Annotated[str, Field(str, check=cidr_or_empty)]
    AuxAddresses: Annotated[dict[str, str], Field(dict, nullable=True)]


class EndpointInterface(TypedDict):
    Address: Annotated[str, Field(str, check=cidr_or_empty)]
    AddressIPv6: Annotated[str, Field(str, check=cidr_or_empty)]
    MacAddress: Annotated[str, Field(str, check=mac_or_empty)]


# ---- NetworkDriver ------------------------------------------------------------

class Empty(TypedDict):
    """Methods dockerd calls without a body (Activate, GetCapabilities...)."""


class CreateNetworkRequest(TypedDict):
    NetworkID: Annotated[str, NETWORK_ID]
    Options: Options
    IPv4Data: Annotated[list[IPAMData], Field(list, nullable=True, item=IPAMData)]
    IPv6Data: Annotated[list[IPAMData], Field(list, nullable=True, item=IPAMData)]


class NetworkRequest(TypedDict):
    """DeleteNetwork and FreeNetwork."""

    NetworkID: Annotated[str, NETWORK_ID]


class CreateEndpointRequest(TypedDict):
    NetworkID: Annotated[str, NETWORK_ID]
    EndpointID: Annotated[str, ENDPOINT_ID]
    Interface: Annotated[EndpointInterface, Field(dict, nullable=True, item=EndpointInterface)]
    Options: Options


class EndpointRequest(TypedDict):
    """EndpointOperInfo, DeleteEndpoint, Leave and RevokeExternalConnectivity."""

    NetworkID: Annotated[str, NETWORK_ID]
    EndpointID: Annotated[str, ENDPOINT_ID]


class JoinRequest(TypedDict):
    NetworkID: Annotated[str, NETWORK_ID]
    EndpointID: Annotated[str, ENDPOINT_ID]
    SandboxKey: Annotated[str, Field(str)]
    Options: Options


class ProgramExternalConnectivityRequest(TypedDict):
    NetworkID: Annotated[str, NETWORK_ID]
    EndpointID: Annotated[str, ENDPOINT_ID]
    Options: Options


class DiscoveryNotification(TypedDict):
    """DiscoverNew and DiscoverDelete."""

    DiscoveryType: Annotated[int, Field(int, required=True)]
    DiscoveryData: Annotated[dict[str, Any] | str | None, Field((dict, str), nullable=True)]


class AllocateNetworkRequest(TypedDict):
    NetworkID: Annotated[str, NETWORK_ID]
    Options: Options
    IPv4Data: Annotated[list[dict[str, Any]], Field(list, nullable=True)]
    IPv6Data: Annotated[list[dict[str, Any]], Field(list, nullable=True)]


NETWORK_REQUESTS: dict[str, type] = {
    "CreateNetwork": CreateNetworkRequest,
    "DeleteNetwork": NetworkRequest,
    "CreateEndpoint": CreateEndpointRequest,
    "EndpointOperInfo": EndpointRequest,
    "DeleteEndpoint": EndpointRequest,
    "Join": JoinRequest,
    "Leave": EndpointRequest,
    "ProgramExternalConnectivity": ProgramExternalConnectivityRequest,
    "RevokeExternalConnectivity": EndpointRequest,
    "DiscoverNew": DiscoveryNotification,
    "DiscoverDelete": DiscoveryNotification,
    "AllocateNetwork": AllocateNetworkRequest,
    "FreeNetwork": NetworkRequest,
}


# ---- IpamDriver ---------------------------------------------------------------

class RequestPoolRequest(TypedDict):
    AddressSpace: Annotated[str, Field(str)]
    Pool: Annotated[str, Field(str, check=ip_or_cidr_or_empty)]
    SubPool: Annotated[str, Field(str, check=ip_or_cidr_or_empty)]
    Options: Options
    V6: Annotated[bool, Field(bool)]


class ReleasePoolRequest(TypedDict):
    PoolID: Annotated[str, POOL_ID]


class RequestAddressRequest(TypedDict):
    PoolID: Annotated[str, POOL_ID]
    Address: Annotated[str, Field(str, check=ip_or_cidr_or_empty)]
    Options: Options


class ReleaseAddressRequest(TypedDict):
    PoolID: Annotated[str, POOL_ID]
    Address: Annotated[str, Field(str, required=True, check=ip_or_cidr_or_empty)]


IPAM_REQUESTS: dict[str, type] = {
    "RequestPool": RequestPoolRequest,
    "ReleasePool": ReleasePoolRequest,
    "RequestAddress": RequestAddressRequest,
    "ReleaseAddress": ReleaseAddressRequest,
}

# Methods dockerd calls with an empty body.
EMPTY_BODY = {"Plugin.Activate", "NetworkDriver.GetCapabilities", "IpamDriver.GetCapabilities",
              "IpamDriver.GetDefaultAddressSpaces"}


def request_type(method: str) -> type:
    """The request TypedDict of ``Interface.Method`` (``Empty`` for body-less calls)."""
    iface, _, name = method.partition(".")
    table = {"NetworkDriver": NETWORK_REQUESTS, "IpamDriver": IPAM_REQUESTS}.get(iface, {})
    return table.get(name, Empty)
