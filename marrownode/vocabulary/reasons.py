"""Why something was not measured, in words a program can test."""

from __future__ import annotations

from enum import StrEnum


class RegionRefusal(StrEnum):
    """Why a requested region got no numbers (the free-text reason says more)."""

    NO_DIXON_SET = "no_dixon_set"
