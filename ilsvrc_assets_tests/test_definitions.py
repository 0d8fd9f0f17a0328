"""The code location lists every asset and check by name, and nothing defined in defs/ is left out."""

from __future__ import annotations

import importlib
import pkgutil

from dagster import AssetChecksDefinition, AssetsDefinition

import ilsvrc_assets.defs
from ilsvrc_assets.definitions import ASSET_CHECKS, defs


def _defined_in_defs() -> tuple[set[str], set[str]]:
    """Names of the assets and checks defined at module level anywhere in ilsvrc_assets.defs."""
    assets, checks = set(), set()
    for info in pkgutil.iter_modules(ilsvrc_assets.defs.__path__):
        module = importlib.import_module(f"ilsvrc_assets.defs.{info.name}")
        for value in vars(module).values():
            if isinstance(value, AssetChecksDefinition):
                checks.update(key.name for key in value.check_keys)
            elif isinstance(value, AssetsDefinition):
                assets.update(key.to_user_string() for key in value.keys)
    return assets, checks


def test_every_check_defined_in_defs_is_in_the_code_location() -> None:
    _, defined = _defined_in_defs()
    listed = {key.name for check in ASSET_CHECKS for key in check.check_keys}
    assert defined - listed == set(), "checks defined in ilsvrc_assets/defs but missing from ASSET_CHECKS"
    graph = defs.resolve_asset_graph()
    in_location = {key.name for key in graph.asset_check_keys}
    assert listed <= in_location


def test_every_asset_defined_in_defs_is_in_the_code_location() -> None:
    defined, _ = _defined_in_defs()
    in_location = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert defined - in_location == set()
    assert {"train_shards", "validation_shards"} <= in_location  # made per settings, not at import


def test_each_asset_function_has_its_asset_name() -> None:
    """Searching the code for an asset's name in the UI finds the function that makes it."""
    for asset in defs.assets:
        for key in asset.keys:
            name = key.to_user_string()
            if name.endswith(
                "_archive"
            ):  # the five archives: one factory, assigned to variables of these names
                module = importlib.import_module("ilsvrc_assets.defs.archives")
                assert getattr(module, name) is asset
            elif name.endswith(
                "_shards"
            ):  # partitioned by the settings: made where the location is assembled
                source = importlib.import_module("ilsvrc_assets.definitions").__file__
                assert f'{name} = shards_asset(settings, "{name}"' in open(source).read()
            else:
                assert asset.op.name == name, f"the asset {name} is made by a function named {asset.op.name}"
