"""Every budgetable resource is one registry entry, and each entry reaches the places a user reads about it."""

from __future__ import annotations

from pathlib import Path

import pytest

from yolo_dms.core.errors import DMSError
from yolo_dms.core.resource_registry import RESOURCES, resource
from yolo_dms.search.settings import DEFAULTS_FILE, SearchSettings, load_defaults
from yolo_dms.usage import search_help

README = (Path(__file__).parents[1] / "README.md").read_text()


@pytest.mark.parametrize("name", RESOURCES)
def test_every_resource_is_in_the_defaults_the_help_and_the_readme(name):
    assert name in load_defaults()["dms"], f"{name}: no absolute-budget line in {DEFAULTS_FILE}"
    resource_line = next(line for line in DEFAULTS_FILE.read_text().splitlines() if line.strip().startswith("resource:"))
    assert f"`{name}`" in resource_line, f"the resource= comment does not list {name}"
    assert any(line.split()[0] == f"{name}=-" for line in search_help().splitlines() if line.strip()), name
    assert f"| `{name}` |" in README, f"{name}: no row in the README's settings table"


@pytest.mark.parametrize("name", RESOURCES)
def test_an_absolute_budget_names_its_resource_and_reads_in_the_budget_unit(name):
    entry = RESOURCES[name]
    settings = SearchSettings.from_arguments({name: 2.0 * entry.scale})
    assert settings.resource == name and settings.target is None
    assert settings.budget(123.0) == pytest.approx(2.0)  # the supernet's figure does not matter
    assert entry.absolute(entry.from_setting(5.0)) == pytest.approx(5.0)
    assert entry.describe(2.0).startswith("2")


def test_an_unknown_resource_is_refused_with_the_registry_names():
    with pytest.raises(DMSError, match="gflops, params, latency"):
        resource("energy")
    with pytest.raises(DMSError, match="resource must be one of gflops, params, latency"):
        SearchSettings.from_arguments({"resource": "energy"})
