"""The translation of the plain library's results into Dagster's: metadata, materialisations, check results."""

from pathlib import Path

import pandas as pd
from dagster import AssetCheckResult, AssetKey, MaterializeResult, MetadataValue

from ilsvrc_assets.stage import Fact, Made, Verdict


def markdown_preview(table: pd.DataFrame, rows: int = 10) -> MetadataValue:
    """The first rows of a table as a Markdown table (no extra dependency)."""
    head = table.head(rows)
    lines = [
        "| " + " | ".join(str(c) for c in head.columns) + " |",
        "|" + "---|" * len(head.columns),
    ]
    for values in head.itertuples(index=False):
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |")
    if len(table) > rows:
        lines.append(f"\n… {len(table) - rows:,} more rows")
    return MetadataValue.md("\n".join(lines))


def metadata_value(value: Fact) -> object:
    """A fact as the UI shows it best: paths as paths, whole numbers as numbers, tables as JSON."""
    if isinstance(value, Path):
        return MetadataValue.path(str(value))
    if isinstance(value, bool) or value is None or isinstance(value, str | float):
        return value
    if isinstance(value, int):
        return MetadataValue.int(value)
    return MetadataValue.json(value)


def metadata(facts: dict[str, Fact]) -> dict[str, object]:
    return {key: metadata_value(value) for key, value in facts.items()}


def materialized(made: Made, **extra: object) -> MaterializeResult:
    """What an asset returns for a stage's :class:`Made`: its path, its facts and a preview."""
    values = {"path": MetadataValue.path(str(made.path)), **metadata(made.facts)}
    if made.preview is not None:
        values["preview"] = markdown_preview(made.preview)
    return MaterializeResult(metadata={**values, **extra})


def check_result(
    verdict: Verdict, *, asset_key: AssetKey | None = None, check_name: str | None = None
) -> AssetCheckResult:
    """A check's result from its :class:`Verdict`: passed when there are no problems, which are then
    its description.

    ``asset_key`` and ``check_name`` say which check it is where one step evaluates several.
    """
    return AssetCheckResult(
        asset_key=asset_key,
        check_name=check_name,
        passed=verdict.passed,
        description=verdict.description,
        metadata=metadata(verdict.facts),
    )
