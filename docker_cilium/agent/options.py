"""Runtime options: what `cilium config Key=Value` may change while the agent runs.

One registry holds every option (Cilium's names): how to parse a value, what
the start flags say, and how to apply a value to the live agent. A PATCH is
validated as a whole before anything is applied (a bad value is a 400 that
names the option, and nothing changes). Changed values are persisted in the
node store (``<lib-dir>/node-state.db``) together with the flag value they
overrode, and re-applied at the next start, unless that flag was given a
different value since (then the new flag wins: it is the later decision).

Another part of the agent adds an option with :meth:`RuntimeOptions.register`
before :meth:`RuntimeOptions.restore` runs (e.g. ``MonitorAggregation``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable

import structlog

from docker_cilium import logging as dclog
from docker_cilium.datapath.maps.configmap import ConfigMap
from docker_cilium.errors import BadRequest
from docker_cilium.kvstore import keys
from docker_cilium.kvstore.backend import Backend
from docker_cilium.policy.resolve import parse_enforcement

if TYPE_CHECKING:
    from docker_cilium.agent.config import DaemonConfig
    from docker_cilium.policy.manager import PolicyManager

log = structlog.get_logger(__name__)

ENABLED, DISABLED = "Enabled", "Disabled"
_TRUE = {"enabled", "enable", "true", "on", "1", "yes"}
_FALSE = {"disabled", "disable", "false", "off", "0", "no"}


def parse_bool(value: str) -> str:
    """Cilium's boolean option values: shown as Enabled/Disabled, several spellings taken."""
    low = value.strip().lower()
    if low in _TRUE:
        return ENABLED
    if low in _FALSE:
        return DISABLED
    raise ValueError("expected Enabled or Disabled (or true/false, on/off)")


def choice(*values: str) -> Callable[[str], str]:
    """A parser accepting one of ``values`` (case-insensitive), returned as spelt here."""
    def parse(value: str) -> str:
        for v in values:
            if value.strip().lower() == v.lower():
                return v
        raise ValueError(f"expected one of {', '.join(values)}")
    return parse


@dataclass(frozen=True)
class RuntimeOption:
    """``flag``: the value the start flags give; ``current``: the live value;
    ``apply``: make a (parsed) value live. ``persist=False`` for an option
    whose owner already persists it (PolicyEnforcement: the policy manager
    stores it with the rules). ``reapply``: the value is also held by
    something that outlives the agent (a pinned BPF map, whose value may be
    an earlier run's), so the start writes the flag's value, or the restored
    change, even when it looks unchanged."""

    name: str
    description: str
    parse: Callable[[str], str]
    flag: Callable[[], str]
    current: Callable[[], str]
    apply: Callable[[str], Awaitable[None]]
    persist: bool = True
    reapply: bool = False


class RuntimeOptions:
    def __init__(self, store: Backend) -> None:
        self.store = store
        self._options: dict[str, RuntimeOption] = {}
        self._saved: dict[str, dict[str, str]] = {}  # name -> {"value", "flag"}

    def register(self, option: RuntimeOption) -> None:
        if option.name in self._options:
            raise ValueError(f"runtime option {option.name} registered twice")
        self._options[option.name] = option

    @property
    def names(self) -> list[str]:
        return sorted(self._options)

    def values(self) -> dict[str, str]:
        return {name: self._options[name].current() for name in self.names}

    def describe(self) -> dict[str, str]:
        return {name: self._options[name].description for name in self.names}

    def validate(self, changes: object) -> dict[str, str]:
        """Parsed values of ``{"Name": "value"}``, or BadRequest naming the bad option."""
        if not isinstance(changes, dict):
            raise BadRequest("options must be a JSON object of Key: Value")
        out: dict[str, str] = {}
        for name, raw in changes.items():
            opt = self._options.get(name)
            if opt is None:
                raise BadRequest(f"unknown or read-only option {name!r} (changeable: {', '.join(self.names)})")
            if not isinstance(raw, str):
                raise BadRequest(f"option {name}: value must be a string, got {json.dumps(raw)}")
            try:
                out[name] = opt.parse(raw)
            except BadRequest:
                raise  # already names the option
            except ValueError as exc:
                raise BadRequest(f"invalid value {raw!r} for option {name}: {exc}") from None
        return out

    async def set(self, changes: object) -> dict[str, str]:
        """Validate all, then apply and persist each; returns what was applied."""
        parsed = self.validate(changes)
        for name, value in parsed.items():
            opt = self._options[name]
            if opt.current() == value:
                continue
            await opt.apply(value)
            if opt.persist:
                self._saved[name] = {"value": value, "flag": opt.flag()}
                await self._save()
            log.info("config.option", option=name, value=value)
        return parsed

    async def _save(self) -> None:
        await self.store.put(keys.RUNTIME_OPTIONS, json.dumps(self._saved, sort_keys=True).encode())

    async def restore(self) -> dict[str, str]:
        """Re-apply persisted values whose flag is unchanged; returns those applied.

        A record that cannot be read, or a value an option no longer accepts,
        is logged and skipped: the flag value stays."""
        applied = await self._restore_saved()
        for name, opt in self._options.items():
            if opt.reapply and name not in applied:
                await opt.apply(opt.parse(opt.flag()))
        return applied

    async def _restore_saved(self) -> dict[str, str]:
        raw = await self.store.get(keys.RUNTIME_OPTIONS)
        if raw is None:
            return {}
        try:
            saved = json.loads(raw)
            if not isinstance(saved, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            log.warning("config.restore.bad_record", error=str(exc))
            return {}
        applied: dict[str, str] = {}
        dropped = False
        for name, rec in saved.items():
            opt = self._options.get(name)
            if opt is None or not opt.persist or not isinstance(rec, dict):
                log.warning("config.restore.skipped", option=name, reason="unknown option or bad record")
                continue
            if rec.get("flag") != opt.flag():
                log.info("config.restore.flag_changed", option=name, saved=rec.get("value"), flag=opt.flag())
                dropped = True  # the new flag is the later decision: forget the old change
                continue
            try:
                value = opt.parse(str(rec.get("value")))
            except (ValueError, BadRequest) as exc:
                log.warning("config.restore.bad_value", option=name, error=str(exc))
                continue
            self._saved[name] = {"value": value, "flag": rec["flag"]}
            if opt.current() != value or opt.reapply:
                await opt.apply(value)
            applied[name] = value
        if dropped:
            await self._save()
        if applied:
            log.info("config.restored", options=applied)
        return applied


def agent_options(policy: PolicyManager, cfg: DaemonConfig,
                  config_map: ConfigMap | None = None) -> list[RuntimeOption]:
    """The options every agent has: PolicyEnforcement (persisted by the policy
    manager with the rules) and Debug: the agent's log level and the
    datapath's CFG_F_DEBUG flag in ``config_map`` (debug events), no restart."""

    async def set_debug(value: str) -> None:
        enabled = value == ENABLED
        dclog.set_debug(enabled)
        if config_map is not None:
            # On the loop, not a worker thread: one lookup and one update of a one-entry
            # array, and the map's writers (this, MonitorAggregation) each read-modify-
            # write the same value, which one thread keeps from interleaving.
            config_map.set_debug(enabled)

    return [
        RuntimeOption("PolicyEnforcement", "Policy enforcement mode (default, always, never)",
                      parse=lambda v: parse_enforcement(v, "PolicyEnforcement"),
                      flag=lambda: cfg.policy_enforcement, current=lambda: policy.enforcement,
                      apply=policy.set_enforcement, persist=False),
        RuntimeOption("Debug", "Debug-level agent logging", parse=parse_bool,
                      flag=lambda: ENABLED if cfg.debug else DISABLED,
                      current=lambda: ENABLED if dclog.debug_enabled() else DISABLED, apply=set_debug,
                      reapply=config_map is not None),
    ]
