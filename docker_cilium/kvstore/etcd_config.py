"""etcd connection settings: ``--kvstore-opt`` pairs and Cilium's etcd config file.

Cilium connects to etcd from ``--kvstore-opt etcd.config=/path/etcd.yaml``
(``endpoints``, ``trusted-ca-file``, ``key-file``, ``cert-file``,
``username``, ``password``) or from ``etcd.address``.  We accept the same,
and refuse at startup, naming the option, whatever we cannot honour: an
``https://`` endpoint without a CA, a client key without its certificate,
a config key we do not implement.  A silent downgrade to plaintext would
send identities (and the credentials) in clear to whoever answers.

The file is the small YAML subset those files use (``key: value`` lines and
one list, block or ``[a, b]`` style); anything else is an error with its
line number rather than a guess, so no YAML library is needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

# What Cilium's etcd config file may hold and we honour.
CONFIG_KEYS = ("endpoints", "trusted-ca-file", "ca-file", "key-file", "cert-file", "username", "password")
# Options for --kvstore-opt with --kvstore etcd.
ETCD_OPTS = ("etcd.address", "etcd.config", "lease.ttl")


class EtcdConfigError(ValueError):
    """The etcd settings ask for something this agent cannot do safely."""


@dataclass(frozen=True)
class EtcdConfig:
    """Everything needed to open one authenticated, possibly TLS, etcd client."""

    endpoints: list[str]  # bare host:port
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def _scalar(raw: str, where: str) -> str:
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    if raw[:1] in ("'", '"', "{", "[", "&", "*", "!", "|", ">"):
        raise EtcdConfigError(f"{where}: unsupported YAML value {raw!r}")
    return raw.split(" #", 1)[0].strip()


def parse_config_file(path: str) -> dict[str, str | list[str]]:
    """Read the flat ``key: value`` / ``key:`` + ``- item`` YAML of an etcd config."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise EtcdConfigError(f"etcd.config {path}: cannot read: {e.strerror}") from e
    out: dict[str, str | list[str]] = {}
    current: str | None = None  # key whose block list we are reading
    for n, line in enumerate(lines, 1):
        where = f"etcd.config {path}:{n}"
        text = line.rstrip()
        if not text.strip() or text.lstrip().startswith("#") or text.strip() in ("---", "..."):
            continue
        if text.lstrip().startswith("- "):
            if current is None:
                raise EtcdConfigError(f"{where}: list item outside a list")
            lst = out[current]
            assert isinstance(lst, list)
            lst.append(_scalar(text.lstrip()[2:], where))
            continue
        if text[0].isspace():
            raise EtcdConfigError(f"{where}: nested YAML is not supported")
        key, sep, value = text.partition(":")
        key = key.strip()
        if not sep:
            raise EtcdConfigError(f"{where}: expected 'key: value'")
        if key not in CONFIG_KEYS:
            raise EtcdConfigError(f"{where}: unsupported option {key!r} (supported: {', '.join(CONFIG_KEYS)})")
        value = value.strip()
        current = None
        if not value:
            out[key] = []
            current = key
        elif value.startswith("[") and value.endswith("]"):
            out[key] = [_scalar(v, where) for v in value[1:-1].split(",") if v.strip()]
        else:
            out[key] = _scalar(value, where)
    return out


def split_endpoints(items: list[str]) -> tuple[list[str], bool | None]:
    """``["https://a:2379", "b:2379"]`` -> (bare host:port list, scheme says TLS).

    The second value is True for https, False for http, None when no
    endpoint carries a scheme; mixing http and https is refused.
    """
    eps: list[str] = []
    schemes: set[bool] = set()
    for part in items:
        part = part.strip()
        for scheme, tls in (("http://", False), ("https://", True)):
            if part.startswith(scheme):
                part = part[len(scheme):]
                schemes.add(tls)
        part = part.rstrip("/")
        if part:
            eps.append(part)
    if len(schemes) > 1:
        raise EtcdConfigError(f"etcd endpoints mix http:// and https://: {', '.join(items)}")
    return eps, (schemes.pop() if schemes else None)


def _readable(opt: str, path: str) -> str:
    if not os.access(path, os.R_OK):
        raise EtcdConfigError(f"etcd option {opt}: cannot read {path}")
    return path


def load_etcd_config(options: dict[str, str]) -> EtcdConfig:
    """Merge ``etcd.address`` and ``etcd.config`` into one checked EtcdConfig."""
    unknown = sorted(set(options) - set(ETCD_OPTS))
    if unknown:
        raise EtcdConfigError(
            f"unsupported --kvstore-opt {', '.join(unknown)} for kvstore etcd (supported: {', '.join(ETCD_OPTS)})"
        )
    file: dict[str, str | list[str]] = {}
    if options.get("etcd.config"):
        file = parse_config_file(options["etcd.config"])
    raw: list[str]
    if options.get("etcd.address"):
        raw = options["etcd.address"].split(",")
    else:
        eps_opt = file.get("endpoints", [])
        raw = [eps_opt] if isinstance(eps_opt, str) else list(eps_opt)
    endpoints, scheme_tls = split_endpoints(raw)
    if not endpoints:
        raise EtcdConfigError(
            "kvstore 'etcd' needs endpoints: --kvstore-opt etcd.address=HOST:PORT[,HOST:PORT...] "
            "or 'endpoints' in the file given by --kvstore-opt etcd.config=PATH"
        )

    def one(key: str) -> str | None:
        v = file.get(key)
        if isinstance(v, list):
            raise EtcdConfigError(f"etcd.config option {key}: expected one value, got a list")
        return v or None

    ca = one("trusted-ca-file") or one("ca-file")
    cert, key = one("cert-file"), one("key-file")
    user, password = one("username"), one("password")
    if (cert is None) != (key is None):
        raise EtcdConfigError("etcd.config: cert-file and key-file must be given together")
    if (user is None) != (password is None):
        raise EtcdConfigError("etcd.config: username and password must be given together")
    tls = bool(scheme_tls) or ca is not None or cert is not None
    if scheme_tls is False and tls:
        raise EtcdConfigError("etcd.config sets TLS files but the endpoints are http://: use https://")
    if tls and ca is None:
        raise EtcdConfigError(
            "https etcd endpoints need trusted-ca-file in etcd.config (server certificates are always verified)"
        )
    return EtcdConfig(
        endpoints=endpoints,
        tls=tls,
        ca_file=_readable("trusted-ca-file", ca) if ca else None,
        cert_file=_readable("cert-file", cert) if cert else None,
        key_file=_readable("key-file", key) if key else None,
        username=user,
        password=password,
    )
