"""One schema per libnetwork request, checked before any handler runs.

As kuryr-libnetwork does with JSON-Schema, but with a small checker of our
own: dockerd's Go encoder sends ``null`` for every nil map or slice, which
generic schema libraries make verbose to express, and the error must name the
exact field path (``IPv4Data[0].Gateway``) for the user reading dockerd's
message. Unknown fields are tolerated (logged): the protocol belongs to
dockerd, and a newer dockerd adding a field must not break networking.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Callable

Check = Callable[[str, Any], None]


class SchemaError(ValueError):
    """Names the offending field; turned into a 400 {"Err": ...} reply."""


@dataclass(frozen=True)
class Field:
    kind: type | tuple[type, ...]
    required: bool = False
    nullable: bool = False
    check: Check | None = None
    item: "dict[str, Field] | None" = None  # schema of list items / nested object


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


def _bool_strict(kind: type | tuple[type, ...], value: Any) -> bool:
    # bool is a subclass of int in Python: don't let true pass as an integer.
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False
    return isinstance(value, kinds)


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
                    unknown += validate(spec.item, item, f"{fpath}[{i}].")
            elif isinstance(value, dict):
                unknown += validate(spec.item, value, f"{fpath}.")
    return unknown


NETWORK_ID = Field(str, required=True, check=non_empty)
ENDPOINT_ID = Field(str, required=True, check=non_empty)
OPTIONS = Field(dict, nullable=True)

IPAM_DATA = {
    "AddressSpace": Field(str),
    "Pool": Field(str, check=ip_or_cidr_or_empty),
    "Gateway": Field(str, check=cidr_or_empty),
    "AuxAddresses": Field(dict, nullable=True),
}

NETWORK_SCHEMAS: dict[str, dict[str, Field]] = {
    "CreateNetwork": {
        "NetworkID": NETWORK_ID,
        "Options": OPTIONS,
        "IPv4Data": Field(list, nullable=True, item=IPAM_DATA),
        "IPv6Data": Field(list, nullable=True, item=IPAM_DATA),
    },
    "DeleteNetwork": {"NetworkID": NETWORK_ID},
    "CreateEndpoint": {
        "NetworkID": NETWORK_ID,
        "EndpointID": ENDPOINT_ID,
        "Interface": Field(dict, nullable=True, item={
            "Address": Field(str, check=cidr_or_empty),
            "AddressIPv6": Field(str, check=cidr_or_empty),
            "MacAddress": Field(str, check=mac_or_empty),
        }),
        "Options": OPTIONS,
    },
    "EndpointOperInfo": {"NetworkID": NETWORK_ID, "EndpointID": ENDPOINT_ID},
    "DeleteEndpoint": {"NetworkID": NETWORK_ID, "EndpointID": ENDPOINT_ID},
    "Join": {
        "NetworkID": NETWORK_ID,
        "EndpointID": ENDPOINT_ID,
        "SandboxKey": Field(str),
        "Options": OPTIONS,
    },
    "Leave": {"NetworkID": NETWORK_ID, "EndpointID": ENDPOINT_ID},
    "ProgramExternalConnectivity": {"NetworkID": NETWORK_ID, "EndpointID": ENDPOINT_ID, "Options": OPTIONS},
    "RevokeExternalConnectivity": {"NetworkID": NETWORK_ID, "EndpointID": ENDPOINT_ID},
    "DiscoverNew": {"DiscoveryType": Field(int, required=True), "DiscoveryData": Field((dict, str), nullable=True)},
    "DiscoverDelete": {"DiscoveryType": Field(int, required=True), "DiscoveryData": Field((dict, str), nullable=True)},
    "AllocateNetwork": {"NetworkID": NETWORK_ID, "Options": OPTIONS,
                        "IPv4Data": Field(list, nullable=True), "IPv6Data": Field(list, nullable=True)},
    "FreeNetwork": {"NetworkID": NETWORK_ID},
}

IPAM_SCHEMAS: dict[str, dict[str, Field]] = {
    "RequestPool": {
        "AddressSpace": Field(str),
        "Pool": Field(str, check=ip_or_cidr_or_empty),
        "SubPool": Field(str, check=ip_or_cidr_or_empty),
        "Options": OPTIONS,
        "V6": Field(bool),
    },
    "ReleasePool": {"PoolID": Field(str, required=True, check=non_empty)},
    "RequestAddress": {
        "PoolID": Field(str, required=True, check=non_empty),
        "Address": Field(str, check=ip_or_cidr_or_empty),
        "Options": OPTIONS,
    },
    "ReleaseAddress": {
        "PoolID": Field(str, required=True, check=non_empty),
        "Address": Field(str, required=True, check=ip_or_cidr_or_empty),
    },
}

# Methods dockerd calls with an empty body.
EMPTY_BODY = {"Plugin.Activate", "NetworkDriver.GetCapabilities", "IpamDriver.GetCapabilities",
              "IpamDriver.GetDefaultAddressSpaces"}
