"""Where a concept comes from: a local file, a local folder in the hub layout, or a hub repo id.

Hub repos (`sd-concepts-library/NAME`) are fetched with huggingface_hub's `hf_hub_download`, so they
land in (and are later read offline from) the standard Hugging Face cache. Every failure is one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import hub
from .demo_concepts import DEMO_PREFIX, demo_embedding
from .errors import BadInput, one_line
from .hub import CONCEPT_FIX, CONCEPT_WEIGHTS, is_hub_id

WEIGHT_NAMES = CONCEPT_WEIGHTS  # diffusers' order: safetensors first
TOKEN_FILE = "token_identifier.txt"
EXTENSIONS = (".bin", ".pt", ".pth", ".ckpt", ".safetensors", ".png")
MAX_BYTES = 100 * 2**20  # embeddings are KBs; anything this large is a model checkpoint given by mistake


@dataclass(frozen=True)
class LocalSource:
    """A concept source resolved to one local file, plus the token hints around it."""

    source: str               # as the user gave it
    path: Path                # the embedding file (in the HF cache for hub repos)
    name: str                 # file stem, folder or repo name: the token of last resort
    token_file: str | None    # contents of token_identifier.txt, when the folder / repo has one
    revision: str | None = None  # hub commit of the cached snapshot (hub repos only)
    data: bytes | None = None    # the bytes themselves, for built-in demo concepts made in code

    def read(self) -> bytes:
        """The file's bytes, refusing anything far too large to be an embedding."""
        if self.data is not None:
            return self.data
        size = self.path.stat().st_size
        if size > MAX_BYTES:
            raise BadInput(f"{self.source} is {size / 2**20:.0f} MiB: far too large for a textual-inversion "
                           "embedding (is it a model checkpoint?)")
        return self.path.read_bytes()


def resolve_source(source: str, revision: str | None = None) -> LocalSource:
    """A user-given source -> the local embedding file, downloading hub repos (at `revision`) into the HF cache."""
    if not isinstance(source, str) or not source.strip():
        raise BadInput("empty concept source: give a hub id (sd-concepts-library/NAME), a file or a folder")
    if source.startswith(DEMO_PREFIX):  # a random demo style for the tiny model, made in code
        name, data = demo_embedding(source)
        return LocalSource(source, Path(f"<built-in {source}>"), name, None, data=data)
    path = Path(source).expanduser()
    if path.is_file():
        return LocalSource(source, path, path.stem, None)
    if path.is_dir():
        return _from_folder(source, path)
    if is_hub_id(source):
        return _from_hub(source, revision)
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


def _from_hub(repo_id: str, revision: str | None = None) -> LocalSource:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, HFValidationError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    cache_only = hub.local_only()  # probed once: no minute of retries against a dead hub
    if cache_only and not any(hub.cached_file(repo_id, n, revision) for n in WEIGHT_NAMES):
        raise hub.missing_file("concept", repo_id, WEIGHT_NAMES[-1], CONCEPT_FIX)
    for name in WEIGHT_NAMES:
        try:
            path = Path(hf_hub_download(repo_id, name, revision=revision, local_files_only=cache_only))
            break
        except LocalEntryNotFoundError:  # not cached (subclass of the next): try the other name
            pass
        except EntryNotFoundError:       # the repo exists but lacks this file: try the next name
            pass
        except RepositoryNotFoundError:  # also private and gated repos
            raise BadInput(f"concept {repo_id}: no such hub repo (or it is private/gated); "
                           "check the id, e.g. sd-concepts-library/gta5-artwork") from None
        except (RevisionNotFoundError, HFValidationError) as err:
            raise BadInput(f"concept {repo_id}: not a valid hub repo or revision ({one_line(err)})") from None
        except OSError as err:           # network errors that are not a plain "not cached"
            raise BadInput(f"concept {repo_id}: the hub is unreachable ({type(err).__name__}); "
                           "connect, or pass a local file or folder") from None
    else:
        raise BadInput(f"concept {repo_id}: the hub repo has no {' or '.join(WEIGHT_NAMES)}")
    token = None
    try:
        token = _read_token_file(Path(hf_hub_download(repo_id, TOKEN_FILE, revision=hub.snapshot_of(path) or revision,
                                                      local_files_only=cache_only)))
    except Exception:  # optional: the token stored in the embedding itself comes first anyway
        pass
    return LocalSource(repo_id, path, repo_id.split("/")[1], token, revision=hub.snapshot_of(path) or revision)
