"""Hugging Face files: size, sha256 and revision from the ``resolve`` endpoint.

``HEAD {HF_ENDPOINT}/{repo}/resolve/{revision}/{path}`` (redirects on the Hub itself,
such as a renamed repository, are followed; the one to the CDN is not):

* a file stored with Git LFS answers with a redirect to the CDN carrying
  ``X-Linked-Etag`` (its sha256, quoted), ``X-Linked-Size`` and ``X-Repo-Commit``;
* a small file kept in Git answers 200 with a plain ``ETag`` (the git blob sha1, not
  a sha256) and ``Content-Length``;
* errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``,
  ``EntryNotFound``, ``GatedRepo``) and ``X-Error-Message``; a private or gated
  repository answers 401 without a token, a gated one 403 with a token that has
  not been granted access.

The download then asks for the file at the commit ``X-Repo-Commit`` named, so a
resumed download never mixes two versions.  The token goes to the Hub only.
"""
from __future__ import annotations

import os
import re
import urllib.error
from typing import Optional

from .download import RemoteHead, open_url, remote_head
from .kinds import classify_header
from .sources import (
    HF_TOKEN_PAGE,
    Auth,
    HuggingFaceRef,
    PullError,
    PullPlan,
    SourceNotFound,
    TokenNeeded,
    hf_endpoint,
    hf_resolve_url,
    normalize_sha256,
    origin,
    sanitize_file_name,
)

TOKEN_ENV = "HF_TOKEN"
_COMMIT = re.compile(r"[0-9a-f]{40}")


def auth_for(endpoint: str, token: Optional[str]) -> Auth:
    return Auth(origin(endpoint), token or os.environ.get(TOKEN_ENV) or None, TOKEN_ENV, from_user=bool(token))


def _repo_page(ref: HuggingFaceRef) -> str:
    return f"https://huggingface.co/{ref.repo}"


def explainer(ref: HuggingFaceRef, auth: Auth):
    """The ``explain`` callback for requests about ``ref``."""

    def explain(exc: urllib.error.HTTPError, url: str) -> PullError:
        code = exc.headers.get("X-Error-Code", "") if exc.headers else ""
        said = exc.headers.get("X-Error-Message", "") if exc.headers else ""
        said = said.replace(auth.token, "***") if auth.token and said else said
        status = f"HTTP {exc.code}" + (f": {said}" if said else "")
        where = "given with --token" if auth.from_user else f"in {TOKEN_ENV}"
        if code == "GatedRepo" and exc.code == 403:
            return TokenNeeded(
                f"{ref.repo} is a gated repository and your Hugging Face token has no access to it yet ({status}). "
                f"Open {_repo_page(ref)}, accept its terms (and wait for approval if the authors review requests), then run the "
                "same pull again. A fine-grained token also needs 'Read access to contents of all public gated repos you can access'."
            )
        if exc.code in (401, 403):
            if auth.token:
                return TokenNeeded(
                    f"Hugging Face refused the token {where} for {ref.repo} ({status}). Check it at {HF_TOKEN_PAGE}; "
                    f"if the repository is gated, accept its terms on {_repo_page(ref)}. (The Hub also answers this way for a "
                    "repository that does not exist: check the name.)"
                )
            what = "gated" if code == "GatedRepo" else "private or gated (or does not exist)"
            return TokenNeeded(
                f"{ref.repo} is {what}: Hugging Face wants a token to download {ref.path} ({status}). "
                f"Create a read token at {HF_TOKEN_PAGE}, set {TOKEN_ENV}=<token> or pass --token <token>, and for a gated "
                f"repository accept its terms on {_repo_page(ref)}."
            )
        if exc.code == 404 or code in ("RepoNotFound", "RevisionNotFound", "EntryNotFound"):
            if code == "RevisionNotFound":
                return SourceNotFound(f"{ref.repo} has no revision {ref.revision!r} (branch, tag or commit; {status}).")
            if code == "RepoNotFound":
                return SourceNotFound(f"There is no Hugging Face repository {ref.repo} ({status}). Check the name.")
            return SourceNotFound(f"{ref.repo} has no file {ref.path} at revision {ref.revision} ({status}). Check the path on {_repo_page(ref)}.")
        if exc.code == 429:
            return PullError("Hugging Face is limiting requests right now (HTTP 429). Wait a minute and run the same pull again.")
        return PullError(f"Hugging Face answered {status} for {ref.repo}/{ref.path}. Try again later.")

    return explain


def head(ref: HuggingFaceRef, auth: Auth, endpoint: str) -> tuple[int, dict]:
    """(status, headers) of the resolve URL, without following the CDN redirect."""
    url = hf_resolve_url(endpoint, ref)
    try:
        with open_url(url, auth=auth, method="HEAD", same_origin_only=True, headers={"Accept-Encoding": "identity"}) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as exc:
        with exc:
            if 300 <= exc.code < 400:
                return exc.code, {k.lower(): v for k, v in exc.headers.items()}
            raise explainer(ref, auth)(exc, url) from None


def plan_from_head(ref: HuggingFaceRef, headers: dict, auth: Auth, endpoint: str, kind: Optional[str]) -> PullPlan:
    """The plan from the resolve endpoint's headers (kind still to be decided)."""
    sha = normalize_sha256(headers.get("x-linked-etag"))
    size_text = headers.get("x-linked-size") or headers.get("content-length")
    size = int(size_text) if size_text and size_text.isdigit() else None
    commit = headers.get("x-repo-commit", "")
    revision = commit if _COMMIT.fullmatch(commit or "") else ref.revision
    return PullPlan(
        url=hf_resolve_url(endpoint, ref, revision),
        file_name=sanitize_file_name(ref.path.rsplit("/", 1)[-1]),
        kind=kind or "",
        sha256=sha,
        size=size,
        source_kind="huggingface",
        label=f"{ref.repo}: {ref.path}",
        page_url=f"{endpoint}/{ref.repo}/blob/{ref.revision}/{ref.path}",
        auth=auth,
    )


def resolve(ref: HuggingFaceRef, *, token: Optional[str] = None, kind: Optional[str] = None) -> PullPlan:
    """The plan for a Hugging Face file: one HEAD, plus the safetensors header
    (HTTP Range) when the kind has to be read from the file."""
    from dataclasses import replace

    endpoint = hf_endpoint()
    auth = auth_for(endpoint, token)
    _, headers = head(ref, auth, endpoint)
    plan = plan_from_head(ref, headers, auth, endpoint, kind)
    if kind:
        return plan
    probe: RemoteHead = remote_head(plan.url, auth=auth, explain=explainer(ref, auth))
    if probe.header is None:
        raise PullError(
            f"{plan.file_name} is not a .safetensors file, so Brushwork cannot tell from its header what it is. "
            "Pass --kind (checkpoint, lora, embedding, vae or upscaler)."
        )
    found = classify_header(probe.header, plan.file_name)
    return replace(plan, kind=found.kind, family=found.family)
