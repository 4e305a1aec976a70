"""``alignkit config``: discover a recipe's config without reading the source.

    alignkit config show byol                    # the full default config as YAML
    alignkit config show byol train.epochs=5     # … with overrides applied (validated)
    alignkit config show configs/byol.yaml -o my.yaml
    alignkit config keys byol                    # every key: allowed values (type, range) and default
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from alignkit.cli._common import add_overrides, overrides_of

__all__ = ["add_command"]


def _recipe_config(recipe: str, overrides: list[str]) -> dict[str, Any]:
    """``recipe`` (a name or a YAML path) validated with ``overrides``."""
    from alignkit.recipes.config import RECIPES, load_config

    if recipe.endswith((".yaml", ".yml")):
        return load_config(recipe, overrides)
    if recipe not in RECIPES:
        raise ValueError(f"RECIPE must be one of {', '.join(RECIPES)} or a .yaml file, got {recipe!r}")
    return load_config(None, [f"recipe={recipe}", *overrides])


def _show(args: argparse.Namespace) -> int:
    import yaml

    config = _recipe_config(args.recipe, overrides_of(args))
    text = yaml.safe_dump(config, sort_keys=False)
    if args.out:
        from alignkit.recipes.config import write_config

        print(f"wrote {write_config(config, Path(args.out))}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


def _keys(args: argparse.Namespace) -> int:
    from alignkit.recipes.config import config_keys

    recipe = _recipe_config(args.recipe, [])["recipe"]
    keys = config_keys(recipe)
    if args.json:
        print(json.dumps(keys, indent=2, ensure_ascii=False))
        return 0
    width = max(len(k) for k in keys)
    print(f"{'key':{width}}  allowed values (default) — recipe {recipe}; set with KEY=VALUE")
    for key, allowed in keys.items():
        print(f"{key:{width}}  {allowed}")
    return 0


def add_command(subparsers: Any) -> None:
    """Add ``config show RECIPE`` and ``config keys RECIPE`` to ``subparsers``."""
    config = subparsers.add_parser(
        "config",
        help="print a recipe's full default config (show) or every key with its allowed values (keys)",
        description="Discover the config of a recipe: `config show RECIPE [KEY=VALUE …]` prints the full "
        "config as YAML (a starting point for --config), `config keys RECIPE` lists every key with "
        "its type, range and default. RECIPE is a recipe name or a YAML file.",
    )
    actions = config.add_subparsers(dest="action", required=True, metavar="{show,keys}")
    show = actions.add_parser("show", help="the full config as YAML (defaults + overrides)")
    show.add_argument("recipe", metavar="RECIPE", help="a recipe name (clip, byol, …) or a .yaml")
    show.add_argument("-o", "--out", help="write the YAML to this file instead of stdout")
    add_overrides(show)
    show.set_defaults(func=_show)
    keys = actions.add_parser("keys", help="every key: type, range, default")
    keys.add_argument("recipe", metavar="RECIPE", help="a recipe name or a .yaml")
    keys.add_argument("--json", action="store_true", help="print JSON")
    keys.set_defaults(func=_keys)
