"""Fixtures of the end-to-end tests: ``shared``, one real server for a whole test module
(its tests keep apart by using distinct users, ``helpers.uid()``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..helpers import ServerProcess


@pytest.fixture(scope="module")
def shared(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])).start()
    yield server
    server.stop()
