"""Shared test fixtures: where ../shared is, and skipping with a stated reason."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_file(*parts: str) -> Path:
    """A file of ../shared, or skip: users' clones do not have it, CI does."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared/{'/'.join(parts)} not present (only in the project's CI/dev checkout)")
    return path
