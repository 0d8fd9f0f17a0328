"""The translation of the plain library's results into Dagster's: metadata, materialisations, check results."""

import base64
from pathlib import Path

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetKey,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
)

from ilsvrc_assets.previews import Picture, Preview, TablePreview
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
    return MaterializeResult(metadata={**values, **preview_metadata(made.previews), **extra})


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
        severity=AssetCheckSeverity[verdict.severity],
        description=verdict.description,
        metadata=metadata(verdict.facts),
    )


def picture_markdown(picture: Picture) -> MetadataValue:
    """A picture as Markdown: the PNG embedded as a ``data:`` URI, then its caption.

    The UI renders it on the asset's page and the materialisation; the same file is under
    ``<data>/previews/<asset>/`` (``previews.write``) for looking at it outside the UI.
    """
    encoded = base64.b64encode(picture.png).decode("ascii")
    alt = picture.caption.replace("[", "(").replace("]", ")")
    return MetadataValue.md(f"![{alt}](data:image/png;base64,{encoded})\n\n{picture.caption}")


_COLUMN_TYPES = {"i": "int", "u": "int", "f": "float", "b": "bool"}


def table_metadata(preview: TablePreview) -> MetadataValue:
    """A small table as ``MetadataValue.table``, column types from the frame's dtypes."""
    frame = preview.table
    schema = TableSchema(
        columns=[
            TableColumn(name=str(c), type=_COLUMN_TYPES.get(frame[c].dtype.kind, "string"))
            for c in frame.columns
        ]
    )
    records = [
        TableRecord(data={str(k): (v.item() if hasattr(v, "item") else v) for k, v in row.items()})
        for row in frame.to_dict(orient="records")
    ]
    return MetadataValue.table(records=records, schema=schema)


def preview_metadata(previews: list[Preview]) -> dict[str, MetadataValue]:
    """Metadata entries for previews, keyed by each preview's name (pictures as Markdown)."""
    return {p.name: picture_markdown(p) if isinstance(p, Picture) else table_metadata(p) for p in previews}
