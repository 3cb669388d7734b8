"""Console themes: YAML files in themes/ (linked as codeb_tui/tui/themes), checked and turned into Textual themes."""

from __future__ import annotations

from pathlib import Path

import yaml
from textual.theme import Theme

from codeb_tui.domain.errors import ConfigError

THEMES_DIR = Path(__file__).parent / "themes"
BUILTIN_ORDER = ("codeb-dark", "codeb-light", "codeb-high-contrast")
_COLOURS = ("primary", "secondary", "accent", "foreground", "background", "surface", "panel",
            "success", "warning", "error", "boost")
_KEYS = {"name", "dark", "variables", *_COLOURS}


def load_theme(path: Path) -> Theme:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read theme: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping")
    unknown = set(data) - _KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]}")
    if not isinstance(data.get("name"), str) or "primary" not in data:
        raise ConfigError(f"{path}: name and primary are required")
    variables = data.get("variables") or {}
    if not isinstance(variables, dict):
        raise ConfigError(f"{path}: variables must be a mapping")
    return Theme(
        name=data["name"], dark=bool(data.get("dark", True)),
        variables={str(k): str(v) for k, v in variables.items()},
        **{k: str(data[k]) for k in _COLOURS if k in data},
    )


def builtin_themes() -> list[Theme]:
    themes = {t.name: t for t in (load_theme(p) for p in sorted(THEMES_DIR.glob("*.yaml")))}
    ordered = [themes.pop(name) for name in BUILTIN_ORDER if name in themes]
    return ordered + list(themes.values())
