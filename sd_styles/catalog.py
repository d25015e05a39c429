"""The style catalog (`concepts/catalog.toml`): named sd-concepts-library styles and the default five."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - pyproject pulls tomli in for 3.10
    import tomli as tomllib

_PACKAGE = Path(__file__).resolve().parent


def shipped_file(name: str) -> Path:
    """A file of the repository's concepts/ folder (`catalog.toml`, `five_styles.toml`).

    In a checkout or an editable install that is `concepts/` next to the package; in an installed wheel
    it is the copy shipped as package data in `sd_styles/data/` (symlinks into concepts/ in the repository).
    """
    for folder in (_PACKAGE.parent / "concepts", _PACKAGE / "data"):
        if (folder / name).is_file():
            return folder / name
    return _PACKAGE / "data" / name   # missing: the caller reports this path


CATALOG_PATH = shipped_file("catalog.toml")
FIVE_STYLES_PATH = shipped_file("five_styles.toml")   # the classic assignment, for `sd-styles run`
_KEYS = {"name", "concept", "token", "default"}


@dataclass(frozen=True)
class CatalogStyle:
    """One catalog entry: a concept source and, when known, its trigger token."""

    name: str
    concept: str                # any --concept source (a hub id in the shipped catalog)
    token: str | None = None    # None: use the token stored in the file
    default: bool = False       # one of the classic five


def load_catalog(path: str | Path | None = None) -> list[CatalogStyle]:
    """All styles of the catalog, in file order; one-line BadInput for a missing or malformed file."""
    path = Path(path) if path is not None else CATALOG_PATH
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"style catalog {path} not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise BadInput(f"style catalog {path} is not valid TOML ({str(err).splitlines()[0]})") from None
    entries = doc.get("style")
    if not isinstance(entries, list) or not entries:
        raise BadInput(f"style catalog {path} has no [[style]] entries")
    styles = [_style(e, i, path) for i, e in enumerate(entries, 1)]
    names = [s.name for s in styles]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BadInput(f"style catalog {path}: duplicate names {', '.join(dupes)}")
    return styles


def default_styles(path: str | Path | None = None) -> list[CatalogStyle]:
    """The styles marked `default = true` (the classic five), in catalog order."""
    return [s for s in load_catalog(path) if s.default]


def find_style(name: str, path: str | Path | None = None) -> CatalogStyle:
    """A style by its name (e.g. 'gta5-artwork')."""
    styles = load_catalog(path)
    for s in styles:
        if s.name == name:
            return s
    raise BadInput(f"no style {name!r} in the catalog; known: {', '.join(s.name for s in styles)}")


def _style(entry: object, index: int, path: Path) -> CatalogStyle:
    where = f"style catalog {path}, entry {index}"
    if not isinstance(entry, dict):
        raise BadInput(f"{where}: expected a table")
    unknown = set(entry) - _KEYS
    if unknown:
        raise BadInput(f"{where}: unknown keys {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_KEYS))}")
    name, concept, token = entry.get("name"), entry.get("concept"), entry.get("token")
    if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name):
        raise BadInput(f"{where}: name must be a simple string such as 'gta5-artwork', got {name!r}")
    if not isinstance(concept, str) or not concept.strip():
        raise BadInput(f"{where} ({name}): concept must be a hub id, file or folder")
    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise BadInput(f"{where} ({name}): token must be a non-empty string")
    default = entry.get("default", False)
    if not isinstance(default, bool):
        raise BadInput(f"{where} ({name}): default must be true or false")
    return CatalogStyle(name=name, concept=concept, token=token, default=default)
