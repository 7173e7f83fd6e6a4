"""Fixtures every test gets."""

from __future__ import annotations

import pytest

from lossbench.training import softmax_chunk


@pytest.fixture(autouse=True)
def no_softmax_chunk_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training in tests uses the default chunk: no timing, no cache file in the user's data
    folder (the chunk changes no result, so nothing else differs)."""
    monkeypatch.setattr(softmax_chunk, "machine_softmax_chunk", lambda: softmax_chunk.DEFAULT_CHUNK)
