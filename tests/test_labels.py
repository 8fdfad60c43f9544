"""Loop labels: the Argo node names ("round 3 / client 7") are also what steps parse."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from argofl.steps.cli import step as step_cli
from argofl.steps.labels import (
    ROUND_FORMAT,
    LabelError,
    client_sequence_format,
    clients_label,
    parse_clients,
    parse_round,
    round_label,
)


def test_labels_read_well_and_parse_back():
    assert round_label(3) == "round 3" == ROUND_FORMAT % 3
    assert clients_label(3, [7]) == "round 3 / client 7"
    assert clients_label(3, ["6", "7"]) == "round 3 / clients 6,7"
    # what Argo's withSequence makes of the split format, after {{inputs.parameters.round}} = "round 3"
    assert client_sequence_format("round 3") % 7 == "round 3 / client 7"
    for r in (1, 12, 999):
        assert parse_round(round_label(r)) == r
        assert parse_clients(clients_label(r, [0, 5, 11]), round=r) == ["0", "5", "11"]


def test_plain_numbers_are_accepted_for_running_a_step_by_hand():
    assert parse_round("3") == 3
    assert parse_round(" 3 ") == 3
    assert parse_clients("6,7") == ["6", "7"]
    assert parse_clients("007") == ["7"]


@pytest.mark.parametrize("bad", ["", "round", "round x", "Round 3", "3.5", "-1", "round 3 / client 1"])
def test_bad_round_is_refused_with_the_value(bad):
    with pytest.raises(LabelError, match="bad round"):
        parse_round(bad)


@pytest.mark.parametrize("bad", ["", "a", "1,,2", "1,", "round 3 / client", "round 3 client 1", "1 2"])
def test_bad_clients_are_refused_with_the_value(bad):
    with pytest.raises(LabelError, match="bad clients"):
        parse_clients(bad)


def test_a_label_of_another_round_is_refused():
    with pytest.raises(LabelError, match=r"belong to round 2, but this step runs round 3"):
        parse_clients("round 2 / client 1", round=3)
    with pytest.raises(LabelError, match="at least one client"):
        clients_label(1, [])


@pytest.mark.parametrize(
    ("value", "message"),
    [("round zero", "bad round 'round zero'"), ("round 0", "round must be at least 1"), ("0", "at least 1")],
)
def test_step_cli_round_option_names_the_bad_value(value, message):
    result = CliRunner().invoke(step_cli, ["distribute", "--run-key", "e/r", "--round", value])
    assert result.exit_code == 2
    assert message in result.output


def test_large_groups_get_short_labels_with_id_ranges():
    assert clients_label(1, list(range(500, 600))) == "round 1 / clients 500-599"
    assert clients_label(2, [0, 1, 2, 5, 8, 9, 10, 11]) == "round 2 / clients 0-2,5,8-11"
    assert clients_label(2, [3, 4]) == "round 2 / clients 3,4"  # two ids read better than a range
    for ids in ([7], [6, 7], list(range(1000)), [0, 2, 3, 4, 9, 11, 12], [5, 3, 4]):
        assert parse_clients(clients_label(4, ids), round=4) == [str(i) for i in ids]
    assert len(clients_label(1, list(range(1000, 2000)))) < 30
    assert parse_clients("0-3") == ["0", "1", "2", "3"]


@pytest.mark.parametrize("bad", ["5-3", "0-9999999", "1-", "-2", "1--2", "1-2-3"])
def test_bad_client_ranges_are_refused_with_the_value(bad):
    with pytest.raises(LabelError, match=r"bad clients"):
        parse_clients(f"round 1 / clients {bad}")
