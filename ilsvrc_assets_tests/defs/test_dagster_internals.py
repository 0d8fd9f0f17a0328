"""The private Dagster names the project uses are all in defs/dagster_internals.py, and all still exist.

After a Dagster upgrade these tests say which name moved (module and name) and in which Dagster
version, rather than failing with an ImportError somewhere in the code location.
"""

from __future__ import annotations

import ast
import importlib
from importlib.metadata import version
from pathlib import Path

import ilsvrc_assets

PACKAGE = Path(ilsvrc_assets.__file__).parent
INTERNALS = PACKAGE / "defs" / "dagster_internals.py"


def _private_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) of every name ``path`` imports from a private Dagster module.

    Read from the source, not by importing it, so that a moved name is reported here, by name.
    """
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if node.module.startswith("dagster._"):
                    found.append((node.lineno, node.module, alias.name))
                elif node.module == "dagster" and alias.name.startswith("_"):  # from dagster import _check
                    found.append((node.lineno, "dagster", alias.name))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, "") for a in node.names if a.name.startswith("dagster._")]
    return found


def test_every_private_name_still_exists_in_this_dagster():
    needed = _private_imports(INTERNALS)
    assert len(needed) >= 11, "dagster_internals.py should hold the project's private Dagster imports"
    missing = []
    for line, module_name, name in needed:
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            missing.append(f"{module_name} (line {line}, for {name}): the module is gone ({e})")
            continue
        if name and not hasattr(module, name):
            missing.append(f"{module_name}.{name} (line {line}): no longer there")
    assert not missing, (
        f"Dagster {version('dagster')} moved private names that ilsvrc_assets/defs/dagster_internals.py "
        "imports (its docstring says what each is for; find the new place or a public replacement):\n  "
        + "\n  ".join(missing)
    )


def test_the_batching_event_log_relies_on_members_the_sqlite_event_log_still_has(tmp_path):
    from ilsvrc_assets.defs import dagster_internals

    storage = dagster_internals.SqliteEventLogStorage(str(tmp_path))
    try:
        missing = [m for m in dagster_internals.SQLITE_EVENT_LOG_MEMBERS if not hasattr(storage, m)]
    finally:
        storage.dispose()
    assert not missing, (
        f"Dagster {version('dagster')}'s SqliteEventLogStorage no longer has {', '.join(missing)}, which "
        "ilsvrc_assets/defs/event_log_storage.py overrides or calls: adapt BatchingSqliteEventLogStorage"
    )


def test_no_other_module_imports_from_private_dagster_modules():
    elsewhere = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: from {module} import {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != INTERNALS
        for line, module, name in _private_imports(path)
    ]
    assert not elsewhere, (
        "import these from ilsvrc_assets.defs.dagster_internals instead (add them there, saying why):\n  "
        + "\n  ".join(elsewhere)
    )


def test_callers_get_the_names_dagster_has():
    from ilsvrc_assets.defs import dagster_internals

    for name in dagster_internals.__all__:
        assert hasattr(dagster_internals, name), f"dagster_internals.__all__ lists {name}, which it lacks"
    tree = ast.parse(INTERNALS.read_text())
    bound = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dagster")
        for alias in node.names
    }
    assert not bound - set(dagster_internals.__all__), "missing from __all__"
