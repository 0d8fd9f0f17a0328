"""An asset's page in the Dagster UI as the browser test reads it: the metadata of a materialisation,
with its pictures and tables (issue 15).

Dagster 1.13 draws a Markdown metadata value inline only when it is shorter than 1,000 characters;
a picture (Markdown with an embedded ``data:image/png`` URI) is always longer, so its row shows a
``[Show Markdown]`` link that opens the rendered Markdown in a dialog. A table value is drawn inline
when it has fewer than five columns. The asset's Overview tab shows the latest materialisation's
metadata; its Partitions tab, with ``partition=`` in the URL, that of one partition.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from ilsvrc_assets_tests.ui.browser import Chromium


def asset_url(base: str, asset: str, partition: str | None = None) -> str:
    """The page showing the latest materialisation of ``asset`` (of one ``partition`` if given)."""
    if partition is None:
        return f"{base}/assets/{asset}"
    return f"{base}/assets/{asset}?" + urllib.parse.urlencode({"view": "partitions", "partition": partition})


# The metadata table's row of one key (its first cell), as a JavaScript expression of KEY.
ROW = "[...document.querySelectorAll('tr')].find(r => r.cells.length > 1 && r.cells[0].innerText.trim() === KEY)"


def _with_key(script: str, key: str) -> str:
    return f"((KEY) => {script})({json.dumps(key)})"


def wait_for_metadata(browser: Chromium, keys: list[str], timeout: float) -> None:
    """Poll until the page has a metadata row for every key; AssertionError naming the missing ones."""
    script = (
        "[...document.querySelectorAll('tr')].map(r => r.cells.length > 1 ? r.cells[0].innerText.trim() : '')"
    )
    deadline = time.monotonic() + timeout
    while True:
        missing = sorted(set(keys) - set(browser.evaluate(script) or []))
        if not missing:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no metadata rows {missing} after {timeout:.0f} s\n--- page text ---\n{browser.text()}"
            )
        time.sleep(0.5)


@dataclass
class ShownPicture:
    """The image of a picture's dialog once loaded: its ``src``, its decoded size in pixels, and the
    rectangle it is drawn in (CSS pixels of the viewport)."""

    src: str
    natural_width: int
    natural_height: int
    rect: dict[str, float]


# The open dialog: its title (the metadata key), whether its opening animation is over, and its
# image once decoded (complete with a natural size).
DIALOG = """(() => {
    const dialog = document.querySelector('[role=dialog]');
    if (!dialog) return null;
    const img = dialog.querySelector('img');
    const container = dialog.closest('.bp5-dialog-container');
    const r = img ? img.getBoundingClientRect() : null;
    return {
        title: dialog.innerText.trim().split('\\n')[0],
        settled: !container || container.classList.contains('bp5-overlay-enter-done'),
        src: img ? img.getAttribute('src') : null,
        complete: img ? img.complete : false,
        naturalWidth: img ? img.naturalWidth : 0,
        naturalHeight: img ? img.naturalHeight : 0,
        rect: r ? {x: r.x, y: r.y, width: r.width, height: r.height} : null,
    };
})()"""


def show_picture(browser: Chromium, key: str, timeout: float) -> ShownPicture:
    """Click ``[Show Markdown]`` in the row of ``key`` and return the dialog's image once decoded.

    AssertionError when the row has no such link, or no image appears and decodes in ``timeout``.
    """
    clicked = browser.evaluate(
        _with_key(
            f"""{{
            const row = {ROW};
            const link = row && [...row.querySelectorAll('a')].find(a => a.innerText.trim() === '[Show Markdown]');
            if (!link) return row ? row.innerText : null;
            link.click();
            return true;
        }}""",
            key,
        )
    )
    assert clicked is True, f"{key}: no [Show Markdown] link in its row: {clicked!r}"
    deadline = time.monotonic() + timeout
    while True:
        dialog = browser.evaluate(DIALOG)
        if (
            dialog
            and dialog["title"] == key
            and dialog["settled"]
            and dialog["src"]
            and dialog["complete"]
            and dialog["naturalWidth"] > 0
        ):
            return ShownPicture(
                dialog["src"], dialog["naturalWidth"], dialog["naturalHeight"], dialog["rect"]
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"{key}: no decoded image in its dialog after {timeout:.0f} s: {dialog}")
        time.sleep(0.2)


def close_dialog(browser: Chromium, timeout: float) -> None:
    """Press the open dialog's Close button and wait until it is gone."""
    browser.evaluate(
        "[...document.querySelectorAll('[role=dialog] button')].find(b => b.innerText.trim() === 'Close').click()"
    )
    deadline = time.monotonic() + timeout
    while browser.evaluate("document.querySelector('[role=dialog]') !== null"):
        if time.monotonic() > deadline:
            raise AssertionError(f"the dialog did not close in {timeout:.0f} s")
        time.sleep(0.2)


def table_lines(browser: Chromium, key: str) -> list[str]:
    """The rendered lines of the table in the row of ``key`` (cells separated by tabs), header first."""
    text = browser.evaluate(
        _with_key(
            f"""{{
            const row = {ROW};
            const table = row && row.cells[row.cells.length - 1].querySelector('table');
            return table ? table.innerText : null;
        }}""",
            key,
        )
    )
    assert text is not None, f"{key}: no table drawn in its row (the UI draws one inline under five columns)"
    return [line.strip() for line in text.splitlines() if line.strip()]


def save_element_screenshot(browser: Chromium, rect: dict[str, float], path: Path) -> None:
    """What the page draws in ``rect`` (a picture's image element) as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    browser.screenshot(path, {key: rect[key] for key in ("x", "y", "width", "height")})
