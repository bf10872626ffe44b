"""Naming rules and model references."""

from __future__ import annotations

import pytest

from model_runtime.errors import InvalidNameError
from model_runtime.naming import ModelRef, check_model_name, check_tag, check_version, is_version

VERSION = "20261125T161745123Z-3f2a9c1e"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alice/iris", ModelRef("alice", "iris", "latest")),
        ("alice/iris:prod", ModelRef("alice", "iris", "prod")),
        (f"alice/iris:{VERSION}", ModelRef("alice", "iris", VERSION)),
        ("bob@example.org/tiramisu-56:v1.2", ModelRef("bob@example.org", "tiramisu-56", "v1.2")),
    ],
)
def test_references_parse(text: str, expected: ModelRef) -> None:
    assert ModelRef.parse(text) == expected
    assert ModelRef.parse(str(expected)) == expected


def test_default_owner_and_version_property() -> None:
    ref = ModelRef.parse(f"iris:{VERSION}", default_owner="carol")
    assert (ref.owner, ref.version) == ("carol", VERSION)
    assert ModelRef.parse("iris:prod", default_owner="carol").version is None


@pytest.mark.parametrize(
    "text",
    [
        "iris",
        "alice/",
        "alice/iris:",
        "../x/iris",
        "alice/Iris",
        "alice/iris:../x",
        "alice/iris:-bad",
        "alice/" + "a" * 64,
        "a b/iris",
    ],
)
def test_bad_references_are_refused(text: str) -> None:
    with pytest.raises(InvalidNameError):
        ModelRef.parse(text)


def test_rules() -> None:
    assert check_model_name("a") == "a"
    assert is_version(VERSION) and not is_version("latest")
    with pytest.raises(InvalidNameError, match="versions look like"):
        check_version("v1")
    with pytest.raises(InvalidNameError, match="invalid tag"):
        check_tag(VERSION)  # a tag that looks like a version would be ambiguous
