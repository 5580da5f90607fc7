"""What makes `cilium policy import` of 100,000 rules possible and fast,
in the parts a unit test can prove (the timings themselves are in
bench/policy_scale.py): a document of 100,000 rules fits the import's limits,
the document is parsed once (by the agent, not also by the CLI), the CLI
imports only the modules of the verb it runs, memoized parsing never lets a
valid object stand in for an invalid one, and a rule's persisted JSON
restores the same rule."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest

from bench.policy_scale import label_rules
from docker_cilium.policy import manager as manager_mod
from docker_cilium.policy.api import PolicyValidationError, parse_rules
from docker_cilium.policy.api import rule as rule_mod
from docker_cilium.policy.repository import Repository
from tests.unit.test_cli import POLICY, agent, policy_file, run  # noqa: F401  (fixtures)


def test_a_document_of_100000_rules_fits_the_import_limits():
    """Indented as people write them; the limits before were 16,384 rules and 16 MiB."""
    doc = json.dumps(label_rules(100_000), indent=2).encode()
    assert len(doc) > 16 << 20
    assert len(doc) <= manager_mod.MAX_IMPORT_BYTES
    assert manager_mod.MAX_IMPORT_RULES >= 100_000


def test_import_with_an_agent_parses_the_document_once(agent, policy_file, monkeypatch):  # noqa: F811
    """The CLI and the agent (served from this process) parse one rule once between them."""
    sock, daemon = agent
    calls = 0
    real = rule_mod.Rule.from_json.__func__  # type: ignore[attr-defined]

    def counting(cls, data, path=""):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return real(cls, data, path)

    monkeypatch.setattr(rule_mod.Rule, "from_json", classmethod(counting))
    res = run(sock, "policy", "import", policy_file)
    assert res.exit_code == 0 and res.output == "Revision: 1\n", res.output
    assert len(daemon.policy.repo) == 1 and calls == 1


def test_import_of_a_bad_file_without_an_agent_names_the_problem(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"endpointSelector": {}, "ingress": [{"fromEntities": ["moon"]}]}]')
    res = run(None, "policy", "import", str(bad))
    assert res.exit_code == 1
    assert "[0].ingress[0].fromEntities[0]" in res.output and str(bad) in res.output


def test_policy_import_loads_only_its_verbs_modules(tmp_path):
    """`cilium policy import` imports neither the datapath nor the monitor CLI modules."""
    code = ("import sys\n"
            "from docker_cilium.cli.main import cli\n"
            "try:\n"
            f"    cli(['-H', {str(tmp_path / 'none.sock')!r}, 'policy', 'import', '-'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('docker_cilium.cli.')))\n")
    out = subprocess.run([sys.executable, "-c", code], input="[]", capture_output=True, text=True, timeout=60)
    loaded = json.loads(out.stdout.strip().splitlines()[-1].replace("'", '"'))
    assert "docker_cilium.cli.policy" in loaded
    assert not {"docker_cilium.cli.bpf", "docker_cilium.cli.monitor", "docker_cilium.cli.prefilter"} & set(loaded)


def test_every_verb_is_listed_and_loads():
    from docker_cilium.cli.main import VERBS, cli

    ctx = click.Context(cli)
    commands = {name: cli.get_command(ctx, name) for name in cli.list_commands(ctx)}
    assert sorted(commands) == sorted(VERBS)
    assert all(cmd.name == name for name, cmd in commands.items())


@pytest.mark.parametrize("first, second, where", [
    ({"port": "80", "protocol": "TCP"}, {"port": 80, "protocol": "TCP"}, "port must be a string"),
    ({"port": "80", "protocol": "TCP"}, {"port": "80", "protocol": "SCTP"}, "invalid protocol"),
    ({"matchLabels": {"id": "a"}}, {"matchLabels": {"id": 1}}, "label value must be a string"),
])
def test_a_memoized_object_never_stands_in_for_an_invalid_one(first, second, where):
    """The second document differs from the first (already parsed, memoized) in one value's type or text."""
    def doc(obj: dict) -> list[dict]:
        if "port" in obj:
            return [{"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [obj]}]}]}]
        return [{"endpointSelector": obj}]

    parse_rules(doc(first))
    with pytest.raises(PolicyValidationError, match=where):
        parse_rules(doc(second))


def test_the_persisted_json_restores_the_same_rules():
    rules = parse_rules(json.dumps([*POLICY, *label_rules(50)]))
    repo = Repository(rules, revision=3)
    back = Repository.from_json(repo.to_json())
    assert back.rules == repo.rules and back.revision == 3
