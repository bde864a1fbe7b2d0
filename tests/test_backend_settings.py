"""The shared rules by which backends read their settings (``flowcraft.backend``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from flowcraft.backend import (
    InvalidSettings,
    dsn_values,
    env_settings,
    merge_settings,
    settings_env,
)


@dataclass(frozen=True, slots=True)
class Sample:
    url: str = "x://default"
    create: bool = True
    lease_seconds: float = 30.0
    batch: int = 10
    region: str | None = None
    derived: str = field(default="", init=False)

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1, not {self.batch}")


def test_strings_are_parsed_as_each_fields_type() -> None:
    values = {"create": "false", "lease_seconds": "2.5", "batch": " 7 ", "region": "eu-1"}
    settings = merge_settings(Sample(), values, backend="Test")
    assert settings == Sample(create=False, lease_seconds=2.5, batch=7, region="eu-1")
    assert merge_settings(Sample(create=False), {"create": "ON"}, backend="Test").create is True
    assert merge_settings(Sample(region="a"), {"region": 3}, backend="Test").region == 3


def test_an_empty_string_clears_an_optional_field() -> None:
    assert merge_settings(Sample(), {"region": ""}, backend="Test").region is None


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"create": "maybe"}, "Test setting create: 'maybe' is not a boolean"),
        ({"batch": "ten"}, "Test setting batch: 'ten' is not an integer"),
        ({"lease_seconds": "soon"}, "Test setting lease_seconds: 'soon' is not a number"),
        ({"colour": "red"}, "unknown Test backend setting 'colour'"),
        ({"derived": "x"}, "unknown Test backend setting 'derived'"),
    ],
)
def test_a_bad_name_or_value_is_an_error_naming_the_setting(
    values: dict[str, str], message: str
) -> None:
    with pytest.raises(InvalidSettings) as caught:
        merge_settings(Sample(), values, backend="Test")
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)


def test_the_dataclass_checks_its_merged_values() -> None:
    with pytest.raises(ValueError, match="batch must be at least 1, not 0"):
        merge_settings(Sample(), {"batch": "0"}, backend="Test")


def test_prefixed_variables_win_over_the_standard_ones() -> None:
    env = {"APP_URL": "x://standard", "T_BATCH": "3", "T_DERIVED": "ignored", "OTHER": "1"}
    assert env_settings(Sample, "T_", env, {"url": "APP_URL"}) == {
        "url": "x://standard",
        "batch": "3",
    }
    env["T_URL"] = "x://own"
    assert env_settings(Sample, "T_", env, {"url": "APP_URL"})["url"] == "x://own"


def test_settings_round_trip_through_their_variables() -> None:
    settings = Sample(create=False, lease_seconds=1.5, batch=4)
    env = settings_env(settings, "T_")
    assert "T_DERIVED" not in env and env["T_REGION"] == ""
    assert merge_settings(Sample(), env_settings(Sample, "T_", env), backend="Test") == settings


def test_a_dsn_gives_its_host_path_and_query() -> None:
    assert dsn_values("sqs://jobs%2Da/tbl/?fifo=true&lease_seconds=2", "sqs") == (
        "jobs-a",
        "tbl",
        {"fifo": "true", "lease_seconds": "2"},
    )
    with pytest.raises(InvalidSettings, match="not a sqs:// DSN"):
        dsn_values("gcp://p/t", "sqs")
