"""Runtime options (agent/options.py), controllers (agent/controllers.py) and the
endpoint status log (endpoint/model.py): persistence, validation, bounds."""

from __future__ import annotations

import asyncio
import json

import pytest

from docker_cilium import logging as dclog
from docker_cilium.agent.config import DaemonConfig
from docker_cilium.agent.controllers import Controllers
from docker_cilium.agent.monitor_options import monitor_options
from docker_cilium.agent.options import RuntimeOption, RuntimeOptions, agent_options, choice, parse_bool
from docker_cilium.datapath.maps.configmap import CFG_F_DEBUG, ConfigMap, datapath_config
from docker_cilium.endpoint.model import STATUS_LOG_MAX, Endpoint, State
from docker_cilium.errors import BadRequest
from docker_cilium.kvstore import keys


class Knob:
    """One live value and its start flag, as an agent part would hold them."""

    def __init__(self, name: str, flag: str, parse=parse_bool) -> None:
        self.value = self.flag = flag
        self.applied: list[str] = []

        async def apply(v: str) -> None:
            self.applied.append(v)
            self.value = v
        self.option = RuntimeOption(name, name, parse=parse, flag=lambda: self.flag,
                                    current=lambda: self.value, apply=apply)


async def _options(store, *knobs: Knob) -> RuntimeOptions:
    opts = RuntimeOptions(store)
    for k in knobs:
        opts.register(k.option)
    await opts.restore()
    return opts


async def test_changes_persist_and_are_reapplied_at_start(store):
    debug, level = Knob("Debug", "Disabled"), Knob("MonitorAggregation", "medium", choice("none", "low", "medium"))
    opts = await _options(store, debug, level)
    assert await opts.set({"Debug": "on", "MonitorAggregation": "LOW"}) == {"Debug": "Enabled",
                                                                              "MonitorAggregation": "low"}
    assert (debug.value, level.value) == ("Enabled", "low")
    # A restarted agent (same flags): both back.
    debug2, level2 = Knob("Debug", "Disabled"), Knob("MonitorAggregation", "medium", choice("none", "low", "medium"))
    await _options(store, debug2, level2)
    assert (debug2.applied, level2.applied) == (["Enabled"], ["low"])


async def test_a_changed_start_flag_wins_and_forgets_the_old_change(store):
    opts = await _options(store, Knob("Debug", "Disabled"))
    await opts.set({"Debug": "Enabled"})
    flagged = Knob("Debug", "Enabled")  # started with --debug now
    await _options(store, flagged)
    assert flagged.applied == []
    assert json.loads(await store.get(keys.RUNTIME_OPTIONS)) == {}
    again = Knob("Debug", "Disabled")  # back to the old flag: the old change is gone
    await _options(store, again)
    assert again.applied == [] and again.value == "Disabled"


async def test_invalid_value_is_a_400_naming_the_option_and_nothing_changes(store):
    debug, level = Knob("Debug", "Disabled"), Knob("MonitorAggregation", "medium", choice("none", "low", "medium"))
    opts = await _options(store, debug, level)
    with pytest.raises(BadRequest, match=r"invalid value 'high' for option MonitorAggregation: expected one of "
                                         r"none, low, medium"):
        await opts.set({"Debug": "Enabled", "MonitorAggregation": "high"})
    with pytest.raises(BadRequest, match=r"unknown or read-only option 'Conntrack' \(changeable: Debug, "
                                         r"MonitorAggregation\)"):
        await opts.set({"Conntrack": "Enabled"})
    with pytest.raises(BadRequest, match="option Debug: value must be a string, got true"):
        await opts.set({"Debug": True})
    assert (debug.applied, level.applied) == ([], [])
    assert await store.get(keys.RUNTIME_OPTIONS) is None


async def test_unreadable_record_or_value_is_skipped(store):
    await store.put(keys.RUNTIME_OPTIONS, b"{not json")
    debug = Knob("Debug", "Disabled")
    assert await (await _options(store, debug)).restore() == {}
    await store.put(keys.RUNTIME_OPTIONS, json.dumps({"Debug": {"value": "purple", "flag": "Disabled"},
                                                      "Gone": {"value": "x", "flag": "y"}}).encode())
    debug = Knob("Debug", "Disabled")
    await _options(store, debug)
    assert debug.applied == [] and debug.value == "Disabled"


async def test_option_owned_elsewhere_is_not_persisted_here(store):
    knob = Knob("PolicyEnforcement", "default", choice("default", "always", "never"))
    knob.option = RuntimeOption(**{**knob.option.__dict__, "persist": False})
    opts = await _options(store, knob)
    await opts.set({"PolicyEnforcement": "always"})
    assert knob.value == "always" and await store.get(keys.RUNTIME_OPTIONS) is None


async def test_controllers_count_successes_and_failures():
    ctrls = Controllers()
    results = iter([None, OSError("etcd unreachable"), OSError("etcd unreachable"), None])
    calls = asyncio.Event()

    async def step() -> None:
        calls.set()
        exc = next(results)
        if exc is not None:
            raise exc
    st = ctrls.start("kvstore-health", 0.01, step, first_run=0)
    async with asyncio.timeout(10):  # a loop that stopped running fails here rather than hangs
        for want in (1, 2, 3):
            while st.success_count + st.failure_count < want:
                await asyncio.sleep(0.005)
            if want == 3:
                model = ctrls.models()[0]
                assert model["status"]["consecutive-failure-count"] == 2 and not st.healthy
                assert model["status"]["last-failure-msg"] == "etcd unreachable"
                assert model["status"]["last-failure-timestamp"].endswith("Z")
        while st.success_count < 2:
            await asyncio.sleep(0.005)
    await ctrls.stop()
    assert st.healthy and st.failure_count == 2 and st.consecutive_failure_count == 0
    assert ctrls.models()[0]["configuration"] == {"interval": "0.01s"}
    with pytest.raises(ValueError, match="already runs"):
        ctrls.start("x", 1, step)
        ctrls.start("x", 1, step)
    await ctrls.stop()


def _endpoint() -> Endpoint:
    return Endpoint(id=7, docker_endpoint_id="e" * 64, docker_network_id="n" * 64, ifname="lxc7", ifindex=70,
                    peer_ifname="tmp7", mac="02:00:00:00:00:07", host_mac="02:00:00:00:00:70", ipv4="10.7.0.7")


def test_status_log_is_bounded_in_memory_and_restarts_with_the_restore():
    ep = _endpoint()
    ep.set_state(State.WAITING_FOR_IDENTITY, "created")
    for i in range(STATUS_LOG_MAX):
        ep.set_state(State.WAITING_TO_REGENERATE, f"change {i}")
        ep.set_state(State.REGENERATING, "writing")
        ep.set_state(State.NOT_READY if i == STATUS_LOG_MAX - 1 else State.READY, f"done {i}")
    assert len(ep.status_log) == STATUS_LOG_MAX
    assert ep.status_model()[-1] == {**ep.status_model()[-1], "state": "not-ready", "code": "Failed",
                                     "message": f"done {STATUS_LOG_MAX - 1}"}
    assert ep.status_model()[-2]["code"] == "OK"
    record = json.loads(json.dumps(ep.to_record()))
    assert "status_log" not in record
    restored = Endpoint.from_record(record)
    assert [(e["state"], e["message"]) for e in restored.status_model()] == [
        ("restoring", "restoring after an agent restart (earlier log entries are not kept)")]
    # A record from before this change (with a log in it) restores the same way.
    restored = Endpoint.from_record({**record, "status_log": [{"timestamp": 1, "state": "ready", "message": "x"}]})
    assert len(restored.status_log) == 1


OTHER_BIT = 1 << 0  # a cilium_config flag bit that Debug does not own


class ArrayMap:
    """A one-entry BPF array in memory, under the real ConfigMap (the kernel's:
    tests/e2e/test_cli_ops.py)."""

    def __init__(self, flags: int) -> None:
        self.value = datapath_config(flags=flags, monitor_aggregation=2)

    def lookup(self, key: object) -> datapath_config:
        return datapath_config.from_buffer_copy(self.value)

    def update(self, key: object, value: datapath_config) -> None:
        self.value = datapath_config.from_buffer_copy(value)

    @property
    def flags(self) -> int:
        return self.value.flags


class Policy:
    enforcement = "default"

    async def set_enforcement(self, mode: str) -> None:
        self.enforcement = mode


async def test_debug_drives_the_datapath_flag_and_is_written_at_start(store):
    stale = ArrayMap(OTHER_BIT | CFG_F_DEBUG)  # pinned by an earlier agent that ran with debug
    try:
        opts = RuntimeOptions(store)
        for opt in agent_options(Policy(), DaemonConfig(debug=False), ConfigMap(stale)):  # type: ignore[arg-type]
            opts.register(opt)
        await opts.restore()
        assert stale.flags == OTHER_BIT  # this agent's value, other bits kept
        await opts.set({"Debug": "true"})
        assert stale.flags == OTHER_BIT | CFG_F_DEBUG and dclog.debug_enabled()
        await opts.set({"Debug": "off"})
        assert stale.flags == OTHER_BIT and not dclog.debug_enabled()
        assert stale.value.monitor_aggregation == 2  # the same entry's other field is left alone
    finally:
        dclog.set_debug(False)


class FakeMonitorMap:
    """cilium_config's aggregation level as MonitorConfigMap shows it."""

    def __init__(self, level: int) -> None:
        self.monitor_aggregation = level

    def set_monitor_aggregation(self, level: int) -> None:
        self.monitor_aggregation = level


async def test_config_shows_every_runtime_option_live_not_its_start_flag(api):
    client, daemon = api
    for opt in monitor_options(FakeMonitorMap(3), daemon.config):  # the flag's level: medium
        daemon.options.register(opt)
    try:
        resp = await client.patch("/v1/config", json={"options": {"MonitorAggregation": "none", "Debug": "on",
                                                                  "PolicyEnforcement": "always"}})
        assert resp.status == 200, await resp.text()
        cfg = await (await client.get("/v1/config")).json()
        assert cfg["options"] == {"Debug": "Enabled", "MonitorAggregation": "none", "PolicyEnforcement": "always"}
        assert {k: cfg["configuration"][k] for k in ("debug", "monitor_aggregation", "policy_enforcement")} == {
            "debug": True, "monitor_aggregation": "none", "policy_enforcement": "always"}
        assert daemon.config.monitor_aggregation == "medium"  # the start flag itself is kept (restore compares it)
    finally:
        dclog.set_debug(False)


@pytest.mark.parametrize("body,message", [
    ({"policy-enforcement": "always", "options": {"PolicyEnforcement": True}},
     "option PolicyEnforcement: value must be a string, got true"),
    ({"policy-enforcement": "always", "options": {"PolicyEnforcement": "never"}},
     "policy-enforcement and options.PolicyEnforcement disagree"),
    ({"policy-enforcement": "always", "options": ["Debug=on"]}, "options must be a JSON object of Key: Value"),
    ({"options": {"Debug": "on", "Nope": "1"}}, "unknown or read-only option 'Nope'"),
])
async def test_patch_config_names_what_is_wrong_and_changes_nothing(api, body, message):
    client, daemon = api
    resp = await client.patch("/v1/config", json=body)
    assert resp.status == 400 and message in (await resp.json())["message"], await resp.text()
    assert daemon.policy.enforcement == "default" and not dclog.debug_enabled()


async def test_patch_config_both_spellings_agree(api):
    client, daemon = api
    resp = await client.patch("/v1/config", json={"policy-enforcement": "ALWAYS",
                                                  "options": {"PolicyEnforcement": "always"}})
    assert resp.status == 200 and (await resp.json())["policy-enforcement"] == "always"
