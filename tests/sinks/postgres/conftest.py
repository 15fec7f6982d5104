from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.pg import fresh_database


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    with fresh_database() as dsn:
        yield dsn
