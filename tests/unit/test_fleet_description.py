"""A fleet description for scripts/fleet: each lab's stack and settings, and every mistake
in it refused at once, naming the key, the value and what is allowed."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from nexus_components.fleet_description import (
    FleetDescriptionError,
    check_parallel,
    config_changes,
    load_description,
    parse_description,
    select_labs,
    set_all_json,
)

SOURCE = Path("/home/dev/labs/fleet.yaml")

TEAM = """
project: ..
parallel: 3
defaults:
  config:
    nexus:vm: {accelerator: tcg, memoryMiB: 2048, cpus: 2}
    nexus:playground: {enabled: false}
    nexus:mounts: [{host: ~/code, vm: /srv/code}]
labs:
  - name: alice
    config:
      nexus:network: {sshPort: 2301}
      nexus:vm: {memoryMiB: 4096}
  - name: bob
    stack: team/bob-lab
    config:
      nexus:playground: {enabled: true, image: "nginx:1.27"}
      nexus:mounts: null
"""


def problems_of(text: str) -> str:
    with pytest.raises(FleetDescriptionError) as caught:
        parse_description(textwrap.dedent(text), SOURCE)
    message = str(caught.value)
    assert message.startswith(f"invalid fleet description {SOURCE}:") or "not valid YAML" in message
    assert "next step:" in message
    return message


def test_each_lab_gets_the_defaults_with_its_own_settings_laid_over_them() -> None:
    fleet = parse_description(TEAM, SOURCE)
    assert fleet.project == Path("/home/dev")
    assert fleet.parallel == 3
    alice, bob = fleet.labs
    assert (alice.name, alice.stack) == ("alice", "alice")
    assert alice.config == {
        "nexus:vm": {"accelerator": "tcg", "memoryMiB": 4096, "cpus": 2},
        "nexus:playground": {"enabled": False},
        "nexus:mounts": [{"host": "~/code", "vm": "/srv/code"}],
        "nexus:network": {"sshPort": 2301},
    }
    # A qualified stack keeps its org; `null` drops a default; a map merges key by key.
    assert (bob.name, bob.stack, bob.stack_file_name) == ("bob", "team/bob-lab", "bob-lab")
    assert bob.config == {
        "nexus:vm": {"accelerator": "tcg", "memoryMiB": 2048, "cpus": 2},
        "nexus:playground": {"enabled": True, "image": "nginx:1.27"},
    }


def test_a_list_replaces_the_default_list_and_a_nested_null_drops_one_key() -> None:
    fleet = parse_description(
        """
        defaults:
          config:
            nexus:network: {sshPort: 2222, forwards: [{host: 8080, guest: 80}, {host: 8443, guest: 443}]}
        labs:
          - name: carol
            config:
              nexus:network: {sshPort: null, forwards: [{host: 8090, guest: 80}]}
        """,
        SOURCE,
    )
    assert fleet.labs[0].config == {"nexus:network": {"forwards": [{"host": 8090, "guest": 80}]}}
    assert fleet.project is None and fleet.parallel is None


def test_every_mistake_is_named_at_once_with_its_value_and_what_is_allowed() -> None:
    message = problems_of(
        """
        paralel: 2
        parallel: 0
        defaults: {config: {nexus:vm: {cpus: 2}}, hosts: []}
        labs:
          - name: alice
          - name: alice
          - stack: nameless
          - name: -dash
          - name: dave
            stak: dave
            config: {vm: {cpus: 2}, nexus:vm: {cpus: 1}}
          - name: erin
            stack: alice
          - name: frank
            stack: "bad stack"
        """
    )
    assert "  paralel: unknown key; allowed keys here: defaults, labs, parallel, project" in message
    assert "  parallel: got 0; allowed: a whole number of at least 1" in message
    assert "  defaults.hosts: unknown key; allowed keys here: config" in message
    assert "  labs[1].name: got 'alice'; allowed: a name no other lab has (labs[0] has it)" in message
    assert "  labs[2].name: missing; allowed: 1 to 63 letters" in message
    assert "  labs[3].name: got '-dash'; allowed: 1 to 63 letters" in message
    assert "  labs[4].stak: unknown key; allowed keys here: config, name, stack" in message
    assert "  labs[4].config.vm: unknown key; allowed: keys of the nexus: namespace" in message
    assert "  labs[5].stack: got 'alice'; allowed: a stack no other lab has (labs[0] has 'alice')" in message
    assert "  labs[6].stack: got 'bad stack'; allowed: a Pulumi stack name" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("labs: []", "labs: got []; allowed: a list of at least one lab, each with a name"),
        ("project: 2\nlabs: [{name: a}]", "project: got 2; allowed: a folder's path, relative to this file"),
        ("parallel: yes\nlabs: [{name: a}]", "parallel: got True; allowed: a whole number of at least 1"),
        ("parallel: 1.5\nlabs: [{name: a}]", "parallel: got 1.5; allowed: a whole number of at least 1"),
        ("- name: a", "(the whole file): got [{'name': 'a'}]; allowed: a mapping with keys"),
        ("labs: [alice]", "labs[0]: got 'alice'; allowed: a mapping with keys config, name, stack"),
        ("labs: [{name: a, config: [1]}]", "labs[0].config: got [1]; allowed: a mapping of nexus: keys"),
        # Two stacks whose settings file would be one (Pulumi.a.yaml).
        (
            "labs: [{name: a}, {name: b, stack: org/a}]",
            "labs[1].stack: got 'org/a'; allowed: a stack no other",
        ),
        # YAML reads this as a date, which no stack file can hold.
        (
            "labs: [{name: a, config: {nexus:x: 2024-01-02}}]",
            "labs[0].config.nexus:x: got datetime.date(2024",
        ),
    ],
)
def test_a_bad_part_is_refused_by_its_key(text: str, expected: str) -> None:
    assert expected in problems_of(text)


def test_text_that_is_not_yaml_is_refused_with_the_parser_s_words() -> None:
    assert "is not valid YAML" in problems_of("labs: [{name: a")


def test_a_project_folder_without_pulumi_yaml_is_refused(tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text("project: nowhere\nlabs: [{name: a}]\n")
    with pytest.raises(FleetDescriptionError) as caught:
        load_description(tmp_path / "fleet.yaml")
    assert f"project: got {tmp_path / 'nowhere'}; allowed: a folder with a Pulumi.yaml" in str(caught.value)
    (tmp_path / "nowhere").mkdir()
    (tmp_path / "nowhere" / "Pulumi.yaml").write_text("name: p\nruntime: python\n")
    assert load_description(tmp_path / "fleet.yaml").project == tmp_path / "nowhere"


def test_a_missing_description_says_what_to_give() -> None:
    with pytest.raises(FleetDescriptionError) as caught:
        load_description(Path("/nonexistent/fleet.yaml"))
    assert "could not read the fleet description /nonexistent/fleet.yaml" in str(caught.value)


def test_parallel_from_the_command_line_is_checked_the_same_way() -> None:
    assert check_parallel(4) == 4
    for bad in (0, -1, True, "2"):
        with pytest.raises(FleetDescriptionError) as caught:
            check_parallel(bad)
        assert f"--parallel: got {bad!r}; allowed: a whole number of at least 1" in str(caught.value)


def test_labs_are_picked_by_name_in_the_description_s_order() -> None:
    fleet = parse_description(TEAM, SOURCE)
    assert [lab.name for lab in select_labs(fleet, ["bob", "alice"])] == ["alice", "bob"]
    assert select_labs(fleet, []) == fleet.labs
    with pytest.raises(FleetDescriptionError) as caught:
        select_labs(fleet, ["alice", "zed"])
    assert "--lab: got 'zed'; allowed: a lab of /home/dev/labs/fleet.yaml: alice, bob" in str(caught.value)


# --------------------------------------------------------------------------- stack settings


def test_a_stack_gets_only_the_keys_that_differ_and_loses_the_nexus_keys_not_described() -> None:
    current = {
        "nexus:vm": '{"accelerator":"tcg","cpus":2}',  # as `pulumi config --json` gives a map
        "nexus:network": '{"sshPort":2301}',
        "nexus:old": "left over",
        "aws:region": "eu-west-1",  # not the fleet's
    }
    desired = {
        "nexus:vm": {"cpus": 2, "accelerator": "tcg"},
        "nexus:network": {"sshPort": 2302},
        "nexus:playground": {"enabled": False},
    }
    changes = config_changes(current, desired)
    assert changes.to_set == {"nexus:network": {"sshPort": 2302}, "nexus:playground": {"enabled": False}}
    assert changes.to_remove == ("nexus:old",)


def test_a_stack_that_has_the_lab_s_settings_needs_no_change() -> None:
    desired = {
        "nexus:vm": {"cpus": 2, "enabled": True},
        "nexus:mounts": [],
        "nexus:sleep": 15,
        "nexus:s": "x",
    }
    current = {
        "nexus:vm": '{"cpus":2,"enabled":true}',
        "nexus:mounts": "[]",
        "nexus:sleep": "15",
        "nexus:s": "x",
    }
    assert not config_changes(current, desired)
    # true is not 1, and 2.0 is not 2, though Python's == says so.
    assert config_changes({"nexus:vm": '{"enabled":1}'}, {"nexus:vm": {"enabled": True}})
    assert config_changes({"nexus:vm": '{"cpus":2.0}'}, {"nexus:vm": {"cpus": 2}})


def test_settings_are_written_as_pulumi_config_set_all_json_reads_them() -> None:
    written = json.loads(
        set_all_json({"nexus:vm": {"cpus": 2}, "nexus:mounts": [], "nexus:n": 15, "nexus:t": "x"})
    )
    assert written == {
        "nexus:vm": {"value": '{"cpus": 2}', "objectValue": {"cpus": 2}, "secret": False},
        "nexus:mounts": {"value": "[]", "objectValue": [], "secret": False},
        "nexus:n": {"value": "15", "secret": False},
        "nexus:t": {"value": "x", "secret": False},
    }
