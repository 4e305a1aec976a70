"""The main job, one step per module along the data flow:

================  ==================================================================================
``config``        the validated config schema (YAML + ``KEY=VALUE`` overrides) of every recipe
``data``          the data a recipe trains on (:class:`RecipeData`, :func:`load_data`)
``systems``       one trainable system per objective (:func:`build_system`)
``run``           train → evaluate → run directory (:func:`run_recipe`)
``evaluate``      per-epoch validation and the test-split metrics
``compare``       every recipe into one objective × metrics table
================  ==================================================================================

    from alignkit.recipes import load_config, run_recipe
    config = load_config("configs/clip.yaml", ["train.epochs=3", "model.embed_dim=64"])
    metrics = run_recipe(config, "runs/clip")          # runs/clip/{config.yaml, metrics.json, …}
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from alignkit.recipes.config import (
        ATTRIBUTES,
        RECIPES,
        config_keys,
        default_config,
        load_config,
        parse_overrides,
        validate_config,
        write_config,
    )
    from alignkit.recipes.data import RecipeData, ink_profiles, load_data
    from alignkit.recipes.run import run_recipe
    from alignkit.recipes.systems import (
        BinderSystem,
        BYOLSystem,
        CLIPSystem,
        DisentangledSystem,
        ITMSystem,
        JointSystem,
        RecipeSystem,
        SupConSystem,
        build_system,
    )
    from alignkit.towers import image_tower

#: Where each public name lives. They are imported on first use (PEP 562), so that importing one
#: step (``alignkit.recipes.compare``, ``alignkit.recipes.config``) does not import every other
#: step, the towers and torch: the command line's parser and ``--help`` stay fast.
_HOMES = {
    **dict.fromkeys(
        ("ATTRIBUTES", "RECIPES", "config_keys", "default_config", "load_config", "parse_overrides",
         "validate_config", "write_config"),
        "alignkit.recipes.config",
    ),
    **dict.fromkeys(("RecipeData", "ink_profiles", "load_data"), "alignkit.recipes.data"),
    "run_recipe": "alignkit.recipes.run",
    **dict.fromkeys(
        ("BinderSystem", "BYOLSystem", "CLIPSystem", "DisentangledSystem", "ITMSystem", "JointSystem",
         "RecipeSystem", "SupConSystem", "build_system"),
        "alignkit.recipes.systems",
    ),
    "image_tower": "alignkit.towers",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


__all__ = [
    "ATTRIBUTES",
    "RECIPES",
    "BYOLSystem",
    "BinderSystem",
    "CLIPSystem",
    "DisentangledSystem",
    "ITMSystem",
    "JointSystem",
    "RecipeData",
    "RecipeSystem",
    "SupConSystem",
    "build_system",
    "config_keys",
    "default_config",
    "image_tower",
    "ink_profiles",
    "load_config",
    "load_data",
    "parse_overrides",
    "run_recipe",
    "validate_config",
    "write_config",
]
