"""ilsvrc_assets: the ILSVRC2012 (ImageNet-1k) release prepared as Dagster software-defined assets.

The plain library (``release``, ``fileio``, ``archives``, ``sample``, ``sources``, ``synsets``,
``validation_tree``, ``bounding_boxes``, ``images``, ``shards``, ``manifest``) imports nothing from
Dagster; the Dagster layer lives in ``ilsvrc_assets.defs`` and ``ilsvrc_assets.definitions``.
"""

__version__ = "0.1.0"
