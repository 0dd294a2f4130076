"""What scripts/fleet tells about each lab: its changes in words and the summary table."""

from __future__ import annotations

from nexus_components.fleet_report import (
    FAILED,
    INTERRUPTED,
    NOT_STARTED,
    READY,
    Outcome,
    describe_changes,
    exit_status,
    one_line,
    render_table,
    tally,
)


def test_pulumi_s_step_counts_in_words() -> None:
    assert describe_changes({"create": 9}) == "9 created"
    assert describe_changes({"same": 8, "update": 1}) == "1 updated"
    assert (
        describe_changes({"delete": 2, "create": 1, "replace": 1, "same": 3})
        == "1 created, 1 replaced, 2 deleted"
    )
    assert describe_changes({"create": 9}, planned=True) == "9 to create"
    assert describe_changes({"same": 9}) == "no changes"
    assert describe_changes({}) == "no changes"
    # A kind without words of its own is told by Pulumi's name for it.
    assert describe_changes({"import": 1, "same": 2}) == "1 import"


def test_the_table_has_a_row_per_lab_with_its_error_on_one_line() -> None:
    error = (
        "invalid stack configuration:\n"
        "  nexus:vm.memoryy: unknown key; allowed keys here: accelerator, arch\n"
        "next step: fix the keys above"
    )
    table = render_table(
        [
            Outcome("alice", "alice", READY, "9 created", 58.4),
            Outcome("broken", "team/broken", FAILED, "", 3.2, error),
            Outcome("carol", "carol", NOT_STARTED, "nothing changed"),
        ]
    )
    assert table.splitlines() == [
        "LAB     STACK        RESULT       CHANGES          SECONDS  ERROR",
        "alice   alice        ready        9 created        58",
        "broken  team/broken  failed       -                3        invalid stack configuration: "
        "nexus:vm.memoryy: unknown key; allowed keys here: accelerator, arch next step: fix the keys above",
        "carol   carol        not started  nothing changed  -",
    ]


def test_a_long_error_is_cut_to_one_line_of_the_width_given() -> None:
    line = one_line("first line\n\n   second " + "x" * 300, width=40)
    assert line == "first line second " + "x" * 19 + "..."
    assert len(line) == 40


def test_the_exit_status_and_the_tally_tell_how_the_labs_ended() -> None:
    ready = Outcome("a", "a", READY, "no changes", 4.0)
    failed = Outcome("b", "b", FAILED, "", 3.0, "boom")
    stopped = Outcome("c", "c", INTERRUPTED, "2 created before it stopped", 9.0, "cancelled")
    assert exit_status([ready, ready], interrupted=False) == 0
    assert exit_status([ready, failed], interrupted=False) == 1
    assert exit_status([ready, stopped], interrupted=True) == 130
    assert tally([ready, failed, ready, stopped]) == "2 ready, 1 failed, 1 interrupted"
