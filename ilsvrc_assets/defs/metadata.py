"""Small helpers for the metadata shown with each materialisation in the Dagster UI."""

import pandas as pd
from dagster import AssetCheckResult, AssetKey, MetadataValue


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


def check_result(
    problems: list[str],
    ok: str,
    *,
    asset_key: AssetKey | None = None,
    check_name: str | None = None,
    **metadata,
) -> AssetCheckResult:
    """A check's result: passed when there are no problems, which are then its description.

    ``asset_key`` and ``check_name`` say which check it is where one step evaluates several.
    """
    return AssetCheckResult(
        asset_key=asset_key,
        check_name=check_name,
        passed=not problems,
        description="; ".join(problems) or ok,
        metadata=metadata,
    )
