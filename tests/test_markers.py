"""Tests are marked by the services they need, so the pure ones can run alone (README, Run the tests)."""

from __future__ import annotations

import pytest

from tests.conftest import markers_of

pytest_plugins = ("pytester",)


def test_fixtures_and_folders_give_the_markers() -> None:
    assert markers_of(["settings", "kafka", "topic", "database", "postgres"], ["consumers"]) == {"kafka", "postgres"}
    assert markers_of(["page", "browser", "viewer"], ["web"]) == {"browser"}
    assert markers_of(["tmp_path"], ["e2e"]) == {"e2e"}
    assert markers_of(["tmp_path"], []) == set()


def test_a_pure_test_carries_no_service_marker(request: pytest.FixtureRequest) -> None:
    assert not {m.name for m in request.node.iter_markers()} & {"kafka", "postgres", "e2e", "browser"}


def test_a_test_using_a_service_fixture_is_marked_for_it(pytester: pytest.Pytester) -> None:
    # the markers registered as the project's pyproject.toml does: run alone, this file's warnings are errors in there too
    pytester.makeini(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\nmarkers =\n    kafka\n    postgres\n    e2e\n    browser\n"
    )
    pytester.makeconftest("import pytest\nfrom tests.conftest import *  # noqa: F403\n")
    pytester.makepyfile(test_uses="def test_it(kafka): pass\ndef test_pure(): pass\n")
    result = pytester.runpytest("--collect-only", "-q", "-m", "kafka", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*test_uses.py::test_it*", "*1/2 tests collected (1 deselected)*"])
