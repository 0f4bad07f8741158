"""civitai's REST API: which file a civitai SOURCE means, with its hash and details.

Endpoints used (https://developer.civitai.com, "Site API"):

* ``GET /api/v1/models/{modelId}``: the model with ``type`` and ``modelVersions``
  (newest first), used when no version is named;
* ``GET /api/v1/model-versions/{versionId}``: the version: ``modelId``, ``model``
  (``name``, ``type``), ``baseModel``, ``trainedWords``, ``files[]`` (``id``, ``name``,
  ``sizeKB``, ``type``, ``primary``, ``metadata {format, fp, size}``, ``hashes.SHA256``,
  ``downloadUrl``), ``images[]`` (``url``, ``type``);
* ``GET /api/v1/model-versions/by-hash/{hash}``: the same, found by a file hash;
* ``GET /api/download/models/{versionId}``: the file, by a redirect to storage that
  sets ``Content-Disposition``.  Creators may require a login: then 401 (JSON
  ``{"error": "Unauthorized", "message": ...}``), or a redirect to the login page.

The API key is sent as ``Authorization: Bearer`` to the civitai host only.
"""
from __future__ import annotations

import os
import urllib.error
from typing import Optional
from urllib.parse import urlsplit

from .download import error_body, error_message, get_json
from .kinds import KIND_LABELS, civitai_kind, family_of_base_model
from .sources import (
    CIVITAI_HOSTS,
    CIVITAI_TOKEN_PAGE,
    Auth,
    CivitaiRef,
    PullError,
    PullPlan,
    SourceNotFound,
    TokenNeeded,
    civitai_base,
    normalize_sha256,
    onto_base,
    origin,
    sanitize_file_name,
)

TOKEN_ENV = "CIVITAI_TOKEN"


def auth_for(base: str, token: Optional[str], pasted: Optional[str] = None) -> Auth:
    """The civitai key: ``token=``/``--token``, else one pasted in the URL, else ``CIVITAI_TOKEN``."""
    given = token or pasted
    return Auth(origin(base), given or os.environ.get(TOKEN_ENV) or None, TOKEN_ENV, from_user=bool(given))


def _redact(text: str, auth: Optional[Auth]) -> str:
    return text.replace(auth.token, "***") if auth is not None and auth.token and text else text


def token_message(what: str, code: int, auth: Optional[Auth], server: str = "") -> TokenNeeded:
    """The message for a 401/403 from civitai: which key is missing, or that it was refused."""
    said = f": {_redact(server, auth)}" if server else ""
    if auth is not None and auth.token:
        where = "given with --token" if auth.from_user else f"in {TOKEN_ENV}"
        return TokenNeeded(
            f"civitai refused the API key {where} for {what} (HTTP {code}{said}). Check the key at {CIVITAI_TOKEN_PAGE} "
            "(API Keys); a model in early access can only be downloaded by those who have unlocked it."
        )
    return TokenNeeded(
        f"{what} can only be downloaded with a civitai API key (HTTP {code}{said}). Create one at {CIVITAI_TOKEN_PAGE} "
        f"(API Keys), then set {TOKEN_ENV}=<key> or pass --token <key>."
    )


def api_error(auth: Auth, what: str):
    """An ``explain`` callback for civitai API and download requests."""

    def explain(exc: urllib.error.HTTPError, url: str) -> PullError:
        server = error_message(error_body(exc))
        if exc.code in (401, 403):
            return token_message(what, exc.code, auth, server)
        if exc.code == 404:
            return SourceNotFound(f"civitai has no {what} (HTTP 404). Check the link or the id.")
        if exc.code == 429:
            return PullError("civitai is limiting requests right now (HTTP 429). Wait a minute and run the same pull again.")
        extra = f": {_redact(server, auth)}" if server else ""
        return PullError(f"civitai answered HTTP {exc.code}{extra} for {what}. Try again later.")

    return explain


def _service_url(url: str, base: str) -> str:
    """A civitai.com URL from the API mapped onto the configured base (a mirror)."""
    host = (urlsplit(url).hostname or "").lower()
    return onto_base(url, base) if host in CIVITAI_HOSTS else url


def _file_matches(entry: dict, query: tuple[tuple[str, str], ...]) -> bool:
    meta = entry.get("metadata") if isinstance(entry.get("metadata"), dict) else {}
    for key, want in query:
        have = entry.get("type") if key == "type" else meta.get(key)
        if str(have or "").lower() != want.lower():
            return False
    return True


def _describe_files(files: list[dict]) -> str:
    rows = []
    for f in files:
        meta = f.get("metadata") if isinstance(f.get("metadata"), dict) else {}
        bits = [str(f.get("type") or "?"), str(meta.get("format") or "?"), str(meta.get("size") or ""), str(meta.get("fp") or "")]
        rows.append(f"  id {f.get('id')}: {f.get('name')} ({', '.join(b for b in bits if b)})")
    return "\n".join(rows)


def choose_file(version: dict, ref: CivitaiRef) -> dict:
    """The file of ``version`` the SOURCE means: by ``+fileId`` / ``fileId=``, by the
    download link's ``type``/``format``/``size``/``fp``, else the primary file."""
    files = [f for f in version.get("files") or [] if isinstance(f, dict)]
    vid = version.get("id")
    if not files:
        raise SourceNotFound(f"civitai version {vid} has no files to download (the model may be archived or taken down).")
    if ref.file_id is not None:
        for f in files:
            if f.get("id") == ref.file_id:
                return f
        raise SourceNotFound(f"civitai version {vid} has no file with id {ref.file_id}. Its files:\n{_describe_files(files)}")
    if ref.file_query:
        matching = [f for f in files if _file_matches(f, ref.file_query)]
        if not matching:
            wanted = ", ".join(f"{k}={v}" for k, v in ref.file_query)
            raise SourceNotFound(f"civitai version {vid} has no file with {wanted}. Its files:\n{_describe_files(files)}")
        files = matching
    for f in files:
        if f.get("primary") is True:
            return f
    for f in files:
        if str(f.get("type", "")).lower() == "model":
            return f
    return files[0]


def preview_url(version: dict) -> Optional[str]:
    """The first picture of the version (videos skipped)."""
    for image in version.get("images") or []:
        if not isinstance(image, dict) or not isinstance(image.get("url"), str):
            continue
        kind = str(image.get("type") or "image").lower()
        if kind == "image" and not image["url"].lower().split("?")[0].endswith((".mp4", ".webm", ".mov")):
            return image["url"]
    return None


def _size(entry: dict) -> Optional[int]:
    kb = entry.get("sizeKB")
    if isinstance(kb, (int, float)) and not isinstance(kb, bool) and kb > 0:
        return round(kb * 1024)
    return None


def fetch_version(version_id: int, auth: Auth, base: str) -> dict:
    return get_json(f"{base}/api/v1/model-versions/{version_id}", auth=auth, explain=api_error(auth, f"model version {version_id}"))


def latest_version_id(model_id: int, auth: Auth, base: str) -> int:
    model = get_json(f"{base}/api/v1/models/{model_id}", auth=auth, explain=api_error(auth, f"model {model_id}"))
    versions = [v for v in model.get("modelVersions") or [] if isinstance(v, dict) and isinstance(v.get("id"), int)]
    if not versions:
        raise SourceNotFound(f"civitai model {model_id} ({model.get('name', '?')}) has no version to download (it may be archived).")
    return versions[0]["id"]  # the API lists the newest version first


def version_by_hash(file_hash: str, *, token: Optional[str] = None) -> dict:
    """The model version whose file has ``file_hash`` (SHA256, AutoV2, ...)."""
    base = civitai_base()
    auth = auth_for(base, token)
    return get_json(f"{base}/api/v1/model-versions/by-hash/{file_hash}", auth=auth, explain=api_error(auth, f"file with hash {file_hash}"))


def plan_from_version(version: dict, ref: CivitaiRef, auth: Auth, base: str, kind: Optional[str]) -> PullPlan:
    """The plan for the chosen file of a model-version JSON (pure)."""
    entry = choose_file(version, ref)
    model = version.get("model") if isinstance(version.get("model"), dict) else {}
    model_type = model.get("type")
    chosen = kind or civitai_kind(model_type, entry.get("type"))
    name = f"{model.get('name') or 'model'} {version.get('name') or ''}".strip()
    if chosen is None:
        raise PullError(
            f"civitai lists {name} as a {model_type or 'resource of unknown type'}; brushwork pull installs "
            f"{', '.join(KIND_LABELS.values())} files. Pass --kind to put it into one of those folders anyway."
        )
    vid = version.get("id")
    url = entry.get("downloadUrl") or version.get("downloadUrl") or f"{base}/api/download/models/{vid}"
    hashes = entry.get("hashes") if isinstance(entry.get("hashes"), dict) else {}
    model_id = version.get("modelId")
    words = tuple(w.strip() for w in version.get("trainedWords") or [] if isinstance(w, str) and w.strip())
    base_model = version.get("baseModel") if isinstance(version.get("baseModel"), str) else None
    return PullPlan(
        url=_service_url(url, base),
        file_name=sanitize_file_name(str(entry.get("name") or f"civitai-{vid}.safetensors")),
        kind=chosen,
        sha256=normalize_sha256(hashes.get("SHA256")),
        size=_size(entry),
        source_kind="civitai",
        label=name,
        info=version,
        preview_url=preview_url(version),
        page_url=f"{base}/models/{model_id}?modelVersionId={vid}" if model_id else f"{base}/api/download/models/{vid}",
        family=family_of_base_model(base_model),
        auth=auth,
        trigger_words=words,
        base_model=base_model,
    )


def resolve(ref: CivitaiRef, *, token: Optional[str] = None, kind: Optional[str] = None) -> PullPlan:
    """The plan for a civitai SOURCE: API requests only, nothing is downloaded."""
    base = civitai_base()
    auth = auth_for(base, token, ref.token)
    version_id = ref.version_id if ref.version_id is not None else latest_version_id(ref.model_id, auth, base)
    version = fetch_version(version_id, auth, base)
    if ref.model_id is not None and isinstance(version.get("modelId"), int) and version["modelId"] != ref.model_id:
        raise SourceNotFound(
            f"civitai version {version_id} belongs to model {version['modelId']}, not {ref.model_id}. "
            "Check the modelVersionId (or drop it for the latest version)."
        )
    return plan_from_version(version, ref, auth, base, kind)


def download_explainer(plan: PullPlan):
    """The ``explain`` callback for the download request of ``plan``."""
    return api_error(plan.auth, plan.label)
