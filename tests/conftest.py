"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest
from matplotlib.figure import Figure


@pytest.fixture
def figures(monkeypatch) -> list[Figure]:
    """Every matplotlib figure saved during the test, as it was when saved."""
    saved, savefig = [], Figure.savefig

    def keep(fig, *args, **kwargs):
        saved.append(fig)
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return saved
