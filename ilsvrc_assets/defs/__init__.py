"""The Dagster layer: one module per stage, named for the assets it defines.

Each module only names its assets and checks, wires lineage and records metadata; the work is
done by the plain module of the same name in ``ilsvrc_assets`` (e.g. ``defs/validation_tree.py``
calls ``ilsvrc_assets.validation_tree``).
"""

import warnings

from dagster import BetaWarning, PreviewWarning

# backfill_policy and blocking checks are marked beta/preview; this project relies on them knowingly.
warnings.filterwarnings("ignore", category=BetaWarning)
warnings.filterwarnings("ignore", category=PreviewWarning)
