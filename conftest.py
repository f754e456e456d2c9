"""Collects the manual's code blocks when pytest is given README.md or docs/ (make test-docs;
tests/docs_harness.py). The suite itself lives in tests/."""

from tests.docs_harness import order_items, pytest_collect_file, restore_environment  # noqa: F401


def pytest_collection_modifyitems(items) -> None:
    order_items(items)


def pytest_sessionfinish() -> None:
    restore_environment()
