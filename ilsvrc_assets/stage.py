"""What a stage returns and what a check returns: plain values the Dagster layer only translates.

Every stage of the preparation is one plain function in the module named for what it makes
(``synsets.make_synsets``, ``bounding_boxes.make_bounding_boxes``, ...). It takes the settings and
its inputs, writes its outputs, and returns a :class:`Made`: the facts its asset shows as metadata.
The asset, the benchmark and the tests call the same function.

Every check is one plain function too (``*_verdict``), returning a :class:`Verdict`: the problems
found (none: it passes), what to say when it passes, and the facts to show with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from ilsvrc_assets.previews import Preview

Log = Callable[[str], None]
"""Where a stage reports progress: ``context.log.info`` in an asset, ``print`` elsewhere."""

Fact = int | float | str | bool | Path | list | dict | None


def quiet(_message: str) -> None:
    """A :data:`Log` that drops the messages (the benchmark's and some tests' choice)."""


@dataclass(frozen=True)
class Made:
    """What a stage made: its main output and the facts its asset shows as metadata.

    ``facts`` keep their Python types (a :class:`~pathlib.Path` is shown as a path, a ``dict`` or
    ``list`` as JSON); ``preview`` is a table whose first rows the UI shows; ``previews`` are the
    pictures and small tables of :mod:`ilsvrc_assets.previews` (also written as files beside the
    outputs, under ``<data>/previews/<asset>/``).
    """

    path: Path
    facts: dict[str, Fact] = field(default_factory=dict)
    preview: pd.DataFrame | None = None
    previews: list[Preview] = field(default_factory=list)


@dataclass(frozen=True)
class Verdict:
    """A check's outcome: it passes when ``problems`` is empty; ``problems`` then say what is wrong."""

    problems: list[str]
    ok: str  # what a pass says, e.g. "50,000 images, 50 per synset"
    facts: dict[str, Fact] = field(default_factory=dict)
    # ERROR: a failure blocks what is downstream; WARN: shown as failed, blocks nothing (e.g. a
    # source that has no boxes at all).
    severity: str = "ERROR"

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def description(self) -> str:
        return "; ".join(self.problems) or self.ok
