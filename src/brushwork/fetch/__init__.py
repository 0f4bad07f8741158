"""``brushwork pull``: models from civitai, Hugging Face, plain URLs and a starter list.

    from brushwork.fetch import pull, resolve
    plan = resolve("https://civitai.com/models/133005/juggernaut-xl")  # what would be fetched
    result = pull(home, "hf://madebyollin/sdxl-vae-fp16-fix/sdxl_vae.safetensors")
    result.path, result.sha256, result.sidecars

* :func:`resolve` turns a SOURCE (:mod:`.sources` lists the forms) into a
  :class:`PullPlan`: the file, its kind, the sha256 the source publishes, its size.
* :func:`pull` downloads it into ``HOME/downloads/*.part`` (resumable, hashed while
  it streams, locked against a second pull of the same file), checks the hash,
  and puts it into the kind's folder, never over a different file (a clash is
  saved as ``NAME-2.ext``), then writes the sidecar files (:mod:`.sidecars`).

Everything raises :class:`PullError` subclasses whose messages are for the user.
docs/downloads.md describes the behaviour.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

from .download import PartLock, PullProgress, Reporter, check_space, downloads_dir, fetch_part, generic_http_error, link_into_place, remote_head
from .kinds import classify_header, kind_folder
from .sidecars import ModelInfo, model_info, write_sidecars
from .sources import (
    AlreadyDownloading,
    Auth,
    Cancelled,
    CivitaiRef,
    HashMismatch,
    HuggingFaceRef,
    NotEnoughSpace,
    PullError,
    PullPlan,
    SourceNotFound,
    StarterRef,
    TokenNeeded,
    UrlRef,
    civitai_base,
    clash_names,
    hf_endpoint,
    normalize_kind,
    origin,
    parse_source,
    sanitize_file_name,
    strip_token,
    url_file_name,
)
from .starter import StarterEntry, find_starter, starter_list, starter_status

log = logging.getLogger(__name__)

__all__ = [
    "resolve", "pull", "PullPlan", "PullResult", "PullProgress", "PullError", "TokenNeeded", "HashMismatch",
    "NotEnoughSpace", "AlreadyDownloading", "SourceNotFound", "Cancelled", "starter_list", "starter_status",
    "StarterEntry", "ModelInfo", "model_info",
]


@dataclass(frozen=True)
class PullResult:
    path: Path
    sha256: str
    kind: str
    size: int
    sidecars: list[Path]
    resumed_from: int  # bytes that were already downloaded when the transfer went on (0: from the start)
    already_installed: bool  # the same file was there: nothing was downloaded
    renamed_from_clash: bool  # a different file had the name: saved as NAME-2.ext
    label: str = ""
    family: Optional[str] = None
    trigger_words: tuple[str, ...] = ()
    page_url: Optional[str] = None
    planned_name: str = ""  # the name the source gives the file


# ---------------------------------------------------------------- resolve


def _resolve_url(ref: UrlRef, token: Optional[str], kind: Optional[str]) -> PullPlan:
    auth = Auth(origin(ref.url), token, "", from_user=True) if token else None

    def explain(exc, url):
        return generic_http_error(exc, ref.display_url, auth)

    probe = remote_head(ref.url, auth=auth, explain=explain)
    name = sanitize_file_name(probe.file_name or url_file_name(probe.final_url) or url_file_name(ref.url) or "download")
    family = None
    if kind is None:
        if probe.header is None:
            raise PullError(
                f"{name} is not a .safetensors file, so Brushwork cannot tell from its header what it is. "
                "Pass --kind (checkpoint, lora, embedding, vae or upscaler)."
            )
        found = classify_header(probe.header, name)
        kind, family = found.kind, found.family
    if probe.header is not None and "." not in name:
        name += ".safetensors"
    etag = probe.etag if probe.etag and probe.etag.startswith('"') else None
    return PullPlan(url=ref.url, file_name=name, kind=kind, sha256=None, size=probe.size, source_kind="url",
                    label=name, page_url=ref.display_url, family=family, etag=etag, auth=auth, ref=ref)


def check_source(source: str) -> None:
    """Refuse text that is no SOURCE form at all (SourceNotFound listing the forms),
    without any network: what a server checks before it starts a download."""
    parse_source(source, starter_names=tuple(e.name for e in starter_list()), civitai=civitai_base(), hf=hf_endpoint())


def resolve(source: str, *, token: Optional[str] = None, kind: Optional[str] = None) -> PullPlan:
    """What ``source`` means: one file with its kind, published sha256 and size.
    Only metadata is fetched (API answers, a HEAD, the safetensors header)."""
    from . import civitai, huggingface

    kind = normalize_kind(kind)
    starters = starter_list()
    ref = parse_source(source, starter_names=tuple(e.name for e in starters), civitai=civitai_base(), hf=hf_endpoint())
    if isinstance(ref, StarterRef):
        entry = find_starter(ref.name)
        assert entry is not None
        plan = resolve(entry.source, token=token, kind=kind or entry.kind)
        if entry.sha256 and plan.sha256 and plan.sha256 != entry.sha256:
            raise HashMismatch(
                f"{entry.name}: the source now publishes sha256 {plan.sha256} for {plan.file_name}, but the starter list "
                f"pins {entry.sha256}. The file was changed upstream; nothing was downloaded. Pull it by its source "
                f"({entry.source}) if you trust the new file."
            )
        # the starter list names the file, so `brushwork models --starter` finds it again
        return replace(plan, source_kind="starter", label=entry.label, sha256=entry.sha256 or plan.sha256,
                       file_name=entry.file_name, family=plan.family or entry.family)
    if isinstance(ref, CivitaiRef):
        return replace(civitai.resolve(ref, token=token, kind=kind), ref=ref)
    if isinstance(ref, HuggingFaceRef):
        return replace(huggingface.resolve(ref, token=token, kind=kind), ref=ref)
    return _resolve_url(ref, token, kind)


def _explainer(plan: PullPlan):
    from . import civitai, huggingface

    if plan.source_kind == "civitai" or isinstance(plan.ref, CivitaiRef):
        return civitai.download_explainer(plan), (lambda: civitai.token_message(plan.label, 401, plan.auth, "civitai sent its login page"))
    if isinstance(plan.ref, HuggingFaceRef):
        return huggingface.explainer(plan.ref, plan.auth), None
    return (lambda exc, url: generic_http_error(exc, plan.display_url, plan.auth)), None


# ---------------------------------------------------------------- pull


def _hash_kind(kind: str) -> str:
    return "checkpoint" if kind == "checkpoint" else "pull"


def _cache(home):
    from ..hashing import HashCache

    return HashCache(Path(home.root) / "cache" / "hashes.json")


def _sha256_of(home, path: Path, kind: str) -> Optional[str]:
    try:
        return _cache(home).get_sha256(path, kind=_hash_kind(kind))
    except OSError:
        return None


def _remember_hash(home, path: Path, kind: str, digest: str) -> None:
    """Put the hash we already have into the hash cache, so listings and infotexts
    need not read the file again (a cache miss only costs time)."""
    cache = _cache(home)
    lookup = getattr(cache, "_lookup", None)
    if lookup is None:
        return
    try:
        lookup(_hash_kind(kind), path, lambda _p: digest)
    except OSError:
        pass


def _same_file_present(home, folder: Path, name: str, kind: str, sha256: Optional[str], size: Optional[int]) -> Optional[Path]:
    """A file under ``name`` (or its ``-2``, ``-3`` ... clash names) with this size
    and sha256, if there is one.  Unknown sha256: None (no file can be proven equal)."""
    if not sha256:
        return None
    for candidate in clash_names(name):
        path = folder / candidate
        if not path.exists():
            return None
        if path.is_file() and (size is None or path.stat().st_size == size) and _sha256_of(home, path, kind) == sha256:
            return path


def _part_path(home, plan: PullPlan) -> Path:
    key = plan.sha256[:16] if plan.sha256 else hashlib.sha1(plan.display_url.encode("utf-8")).hexdigest()[:16]
    return downloads_dir(home) / f"{plan.file_name}.{key}.part"


def _installed(home, path: Path, plan: PullPlan, sha: str, family: Optional[str], reporter: Reporter) -> PullResult:
    sidecars = _sidecars(path, plan, family)
    reporter.report("done", path.stat().st_size, force=True)
    return PullResult(path, sha, plan.kind, path.stat().st_size, sidecars, 0, True, False, plan.label, family, plan.trigger_words,
                      plan.page_url, plan.file_name)


def _sidecars(path: Path, plan: PullPlan, family: Optional[str]) -> list[Path]:
    try:
        return write_sidecars(path, plan, family)
    except OSError as exc:  # the model is in place; missing sidecars are no reason to fail
        log.warning("could not write the sidecar files of %s: %s", path.name, exc)
        return []


def _home(home):
    from ..paths import DataHome

    return home if hasattr(home, "checkpoint_dirs") else DataHome.resolve(home)


def pull(home, source: str, *, token: Optional[str] = None, kind: Optional[str] = None,
         progress: Optional[Callable[[PullProgress], None]] = None, cancel: Optional[threading.Event] = None) -> PullResult:
    """Download ``source`` into the data home's folder for its kind; see the module
    docstring.  ``progress`` gets :class:`PullProgress` a few times a second;
    setting ``cancel`` stops between chunks (:class:`Cancelled`; the part is kept)."""
    home = _home(home)
    reporter = Reporter(progress, strip_token(source))
    reporter.report("resolving", 0, force=True)
    plan = resolve(source, token=token, kind=kind)
    reporter.file_name = plan.file_name
    reporter.total = plan.size
    family = plan.family
    folder = kind_folder(home, plan.kind)
    present = _same_file_present(home, folder, plan.file_name, plan.kind, plan.sha256, plan.size)
    if present is not None:
        return _installed(home, present, plan, plan.sha256, family, reporter)
    part = _part_path(home, plan)
    explain, login_error = _explainer(plan)
    with PartLock(part.with_name(part.name + ".lock"), plan.file_name):
        present = _same_file_present(home, folder, plan.file_name, plan.kind, plan.sha256, plan.size)
        if present is not None:  # another pull finished it while we waited for the lock
            return _installed(home, present, plan, plan.sha256, family, reporter)
        if plan.size:
            kept = part.stat().st_size if part.exists() else 0
            check_space(part.parent, plan.size - kept, plan.file_name)
        got = fetch_part(plan, part, explain=explain, reporter=reporter, cancel=cancel, target_dir=folder, login_error=login_error)
        record = part.with_name(part.name + ".json")
        if plan.sha256 and got.sha256 != plan.sha256:
            part.unlink(missing_ok=True)
            record.unlink(missing_ok=True)
            raise HashMismatch(
                f"{plan.file_name}: the downloaded file has sha256 {got.sha256}, but {plan.label} publishes {plan.sha256}. "
                "The download was damaged or the file changed on the server; nothing was kept. Run the same pull again; "
                "if it happens again, tell the model's authors."
            )
        present = _same_file_present(home, folder, plan.file_name, plan.kind, got.sha256, got.size)
        if present is not None:
            part.unlink(missing_ok=True)
            record.unlink(missing_ok=True)
            return _installed(home, present, plan, got.sha256, family, reporter)
        path = link_into_place(part, folder, clash_names(plan.file_name))
        record.unlink(missing_ok=True)
    _remember_hash(home, path, plan.kind, got.sha256)
    sidecars = _sidecars(path, plan, family)
    reporter.report("done", got.size, force=True)
    return PullResult(path, got.sha256, plan.kind, got.size, sidecars, got.resumed_from, False, path.name != plan.file_name,
                      plan.label, family, plan.trigger_words, plan.page_url, plan.file_name)
