"""Where a concept comes from: a local file, a local folder in the hub layout, or a hub repo id.

Hub repos (`sd-concepts-library/NAME`) are fetched with huggingface_hub's `hf_hub_download`, so they
land in (and are later read offline from) the standard Hugging Face cache. Every failure is one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput

WEIGHT_NAMES = ("learned_embeds.safetensors", "learned_embeds.bin")  # diffusers' order: safetensors first
TOKEN_FILE = "token_identifier.txt"
EXTENSIONS = (".bin", ".pt", ".pth", ".ckpt", ".safetensors", ".png")
MAX_BYTES = 100 * 2**20  # embeddings are KBs; anything this large is a model checkpoint given by mistake
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class LocalSource:
    """A concept source resolved to one local file, plus the token hints around it."""

    source: str               # as the user gave it
    path: Path                # the embedding file (in the HF cache for hub repos)
    name: str                 # file stem, folder or repo name: the token of last resort
    token_file: str | None    # contents of token_identifier.txt, when the folder / repo has one

    def read(self) -> bytes:
        """The file's bytes, refusing anything far too large to be an embedding."""
        size = self.path.stat().st_size
        if size > MAX_BYTES:
            raise BadInput(f"{self.source} is {size / 2**20:.0f} MiB: far too large for a textual-inversion "
                           "embedding (is it a model checkpoint?)")
        return self.path.read_bytes()


def is_hub_id(source: str) -> bool:
    """`org/name` that is not an existing path and does not name an embedding file."""
    return bool(_HUB_ID.match(source)) and not source.lower().endswith(EXTENSIONS) and not Path(source).exists()


def resolve_source(source: str) -> LocalSource:
    """A user-given source -> the local embedding file, downloading hub repos into the HF cache."""
    if not isinstance(source, str) or not source.strip():
        raise BadInput("empty concept source: give a hub id (sd-concepts-library/NAME), a file or a folder")
    path = Path(source).expanduser()
    if path.is_file():
        return LocalSource(source, path, path.stem, None)
    if path.is_dir():
        return _from_folder(source, path)
    if is_hub_id(source):
        return _from_hub(source)
    raise BadInput(f"concept {source}: no such file or folder; give a hub id (sd-concepts-library/NAME), "
                   f"a {'/'.join(EXTENSIONS)} file, or a folder holding learned_embeds.bin")


def _from_folder(source: str, folder: Path) -> LocalSource:
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return LocalSource(source, folder / name, folder.resolve().name, _read_token_file(folder / TOKEN_FILE))
    raise BadInput(f"concept folder {source} has no {' or '.join(WEIGHT_NAMES)}; pass the embedding file itself")


def _read_token_file(path: Path) -> str | None:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    # a git-lfs pointer or junk is no token: real ones are one short line
    return token if token and "\n" not in token and len(token) <= 100 and not token.startswith("version ") else None


def _from_hub(repo_id: str) -> LocalSource:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, HFValidationError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    offline = False
    for name in WEIGHT_NAMES:
        try:
            path = Path(hf_hub_download(repo_id, name))
            break
        except LocalEntryNotFoundError:  # not cached, and offline / hub unreachable (subclass of the next)
            offline = True
        except EntryNotFoundError:       # the repo exists but lacks this file: try the next name
            pass
        except RepositoryNotFoundError:  # also private and gated repos
            raise BadInput(f"concept {repo_id}: no such hub repo (or it is private/gated); "
                           "check the id, e.g. sd-concepts-library/gta5-artwork") from None
        except (RevisionNotFoundError, HFValidationError) as err:
            raise BadInput(f"concept {repo_id}: not a valid hub repo ({str(err).splitlines()[0][:100]})") from None
        except OSError as err:           # network errors that are not a plain "not cached"
            raise BadInput(f"concept {repo_id}: the hub is unreachable ({type(err).__name__}); "
                           "connect, or pass a local file or folder") from None
    else:
        if offline:
            raise BadInput(f"concept {repo_id} is not in the local Hugging Face cache and the hub is unreachable "
                           "(offline, HF_HUB_OFFLINE=1?): download it once online, or pass a local file or folder")
        raise BadInput(f"concept {repo_id}: the hub repo has no {' or '.join(WEIGHT_NAMES)}")
    token = None
    try:
        token = _read_token_file(Path(hf_hub_download(repo_id, TOKEN_FILE)))
    except Exception:  # optional: the token stored in the embedding itself comes first anyway
        pass
    return LocalSource(repo_id, path, repo_id.split("/")[1], token)
