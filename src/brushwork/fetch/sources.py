"""What ``brushwork pull SOURCE`` accepts, parsed by pure functions.

SOURCE forms (see docs/downloads.md):

* a civitai model page ``https://civitai.com/models/133005/juggernaut-xl`` (the latest
  version) or with ``?modelVersionId=348913``;
* a civitai download URL ``https://civitai.com/api/download/models/348913`` (with an
  optional ``?type=Model&format=SafeTensor&size=pruned&fp=fp16`` choosing the file);
* a civitai AIR ``urn:air:sdxl:checkpoint:civitai:133005@348913`` (``urn:`` and ``air:``
  optional, ``@version`` optional = latest, ``+fileId`` optional), so also the short
  ``civitai:133005@348913``;
* a Hugging Face file ``https://huggingface.co/OWNER/REPO/blob/REV/path/file.safetensors``
  (or ``/resolve/REV/...``), or ``hf://OWNER/REPO/path/file.safetensors`` (revision
  ``main``) and ``hf://OWNER/REPO@REV/path/file.safetensors``;
* any other ``https://`` (or ``http://``) URL of a file;
* a name from the starter list (``brushwork models --starter``).

A civitai or Hugging Face URL that is pasted is mapped onto the configured service
(``BRUSHWORK_CIVITAI_URL``, ``HF_ENDPOINT``), so a mirror serves pasted links too.

This module also holds the errors every part of ``pull`` raises and the plan a
source resolves to: the messages are written for the person who typed the command.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Iterator, Optional
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

CIVITAI_DEFAULT = "https://civitai.com"
HF_DEFAULT = "https://huggingface.co"
CIVITAI_HOSTS = ("civitai.com", "www.civitai.com")
HF_HOSTS = ("huggingface.co", "www.huggingface.co", "hf.co")
KINDS = ("checkpoint", "lora", "embedding", "vae", "upscaler")
CIVITAI_TOKEN_PAGE = "https://civitai.com/user/account"
HF_TOKEN_PAGE = "https://huggingface.co/settings/tokens"

ACCEPTED_FORMS = """\
  https://civitai.com/models/133005/juggernaut-xl            (civitai model page: latest version)
  https://civitai.com/models/133005?modelVersionId=348913    (a version)
  https://civitai.com/api/download/models/348913             (civitai download link)
  urn:air:sdxl:checkpoint:civitai:133005@348913              (civitai AIR; also civitai:133005@348913)
  https://huggingface.co/OWNER/REPO/blob/main/file.safetensors  (Hugging Face file; /resolve/ works too)
  hf://OWNER/REPO/file.safetensors  or  hf://OWNER/REPO@REVISION/path/file.safetensors
  https://example.org/model.safetensors                       (any direct file URL)
  a starter-list name such as sd15                            (see: brushwork models --starter)"""


# ---------------------------------------------------------------- errors


class PullError(Exception):
    """A pull that could not be done; the message says what was wrong and what to do."""


class SourceNotFound(PullError):
    """The SOURCE is not understood, or the service has no such model/file."""


class TokenNeeded(PullError):
    """The service wants an access token (missing or refused)."""


class HashMismatch(PullError):
    """The downloaded bytes do not have the hash the source publishes."""


class NotEnoughSpace(PullError):
    """The disk is (or would become) full."""


class AlreadyDownloading(PullError):
    """Another pull is downloading the same file right now."""


class Cancelled(PullError):
    """The pull was stopped; what was downloaded is kept for the next run."""


# ---------------------------------------------------------------- parsed sources


@dataclass(frozen=True)
class CivitaiRef:
    """A civitai model/version (and optionally one file of it)."""

    model_id: Optional[int] = None
    version_id: Optional[int] = None
    file_id: Optional[int] = None
    file_query: tuple[tuple[str, str], ...] = ()  # type/format/size/fp of a download link
    token: Optional[str] = field(default=None, repr=False)  # one pasted in the URL (?token=)


@dataclass(frozen=True)
class HuggingFaceRef:
    repo: str  # "owner/name", or "datasets/owner/name"
    revision: str
    path: str  # inside the repo, "/"-separated, not URL-quoted


@dataclass(frozen=True)
class UrlRef:
    url: str = field(repr=False)  # as given (it may carry a signed query)
    display_url: str = ""  # without token= parameters: the form that is stored and printed


@dataclass(frozen=True)
class StarterRef:
    name: str


SourceRef = CivitaiRef | HuggingFaceRef | UrlRef | StarterRef


@dataclass(frozen=True)
class Auth:
    """A bearer token sent to one host (scheme://host:port) only; never printed."""

    origin: str
    token: Optional[str] = field(default=None, repr=False)
    env_name: str = ""  # where such a token comes from, for messages (CIVITAI_TOKEN, HF_TOKEN)
    from_user: bool = False  # given as token= / --token (not from the environment)

    def __repr__(self) -> str:
        return f"Auth(origin={self.origin!r}, token={'set' if self.token else 'none'})"


@dataclass(frozen=True)
class PullPlan:
    """What a SOURCE resolves to: one file, where it comes from and how to check it."""

    url: str = field(repr=False)  # where the bytes are requested (may redirect to storage)
    file_name: str
    kind: str
    sha256: Optional[str]  # lower-case hex published by the source, or None
    size: Optional[int]  # bytes, when the source says
    source_kind: str  # 'civitai' | 'huggingface' | 'url' | 'starter'
    label: str  # a human name ("Juggernaut XL v9", "OWNER/REPO: file")
    info: Optional[dict] = field(default=None, repr=False)  # civitai's model-version JSON
    preview_url: Optional[str] = None
    page_url: Optional[str] = None  # a page about the model (printed, stored in sidecars)
    family: Optional[str] = None  # sd1 | sd2 | sdxl when known
    etag: Optional[str] = None  # validator of the remote file (If-Range on resume)
    auth: Optional[Auth] = None
    trigger_words: tuple[str, ...] = ()
    base_model: Optional[str] = None  # civitai's baseModel ("SD 1.5", "SDXL 1.0" ...)
    ref: object = field(default=None, repr=False, compare=False)  # the parsed SOURCE

    @property
    def display_url(self) -> str:
        return strip_token(self.url)


# ---------------------------------------------------------------- URL helpers


def strip_token(url: str) -> str:
    """``url`` without secrets: no ``token=`` query parameters (civitai accepts its API
    key there) and no ``user:password@`` part."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" in parts.netloc:
        parts = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])
    if not parts.query:
        return urlunsplit(parts)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() != "token"]
    return urlunsplit(parts._replace(query=urlencode(kept)))


def host_of(url: str) -> str:
    """host[:port] of ``url`` (never a ``user:password@`` part), for messages."""
    try:
        return urlsplit(strip_token(url)).netloc or url
    except ValueError:
        return "the server"


def query_token(url: str) -> Optional[str]:
    """The ``token=`` parameter of ``url``, if any."""
    try:
        pairs = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    except ValueError:
        return None
    return next((v for k, v in pairs if k.lower() == "token" and v), None)


def origin(url: str) -> str:
    """scheme://host[:port] of ``url``, lower-cased: what a token is bound to."""
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def _base(value: Optional[str], default: str, env: str) -> str:
    base = (value or default).strip().rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PullError(f"{env}={value!r} is not a base URL; set it to something like {default} (scheme and host, no path).")
    return base


def civitai_base(environ: Optional[dict] = None) -> str:
    """``BRUSHWORK_CIVITAI_URL`` or https://civitai.com (no trailing slash)."""
    env = os.environ if environ is None else environ
    return _base(env.get("BRUSHWORK_CIVITAI_URL"), CIVITAI_DEFAULT, "BRUSHWORK_CIVITAI_URL")


def hf_endpoint(environ: Optional[dict] = None) -> str:
    """``HF_ENDPOINT`` or https://huggingface.co (no trailing slash)."""
    env = os.environ if environ is None else environ
    return _base(env.get("HF_ENDPOINT"), HF_DEFAULT, "HF_ENDPOINT")


def onto_base(url: str, base: str) -> str:
    """``url``'s path and query on ``base`` (a pasted civitai.com link -> the mirror)."""
    parts = urlsplit(url)
    b = urlsplit(base)
    path = b.path.rstrip("/") + parts.path
    return urlunsplit((b.scheme, b.netloc, path, parts.query, ""))


# ---------------------------------------------------------------- parsing


_AIR = re.compile(
    r"^(?:urn:)?(?:air:)?(?:(?P<eco>[A-Za-z0-9_\-]+):)?(?:(?P<type>[A-Za-z0-9_\-]+):)?"
    r"(?P<source>civitai|huggingface|civitai-r2|orchestrator):(?P<id>[A-Za-z0-9_\-/.]+?)"
    r"(?:@(?P<version>\d+))?(?:\+(?P<file>\d+))?(?:\.(?P<format>[A-Za-z0-9_\-]+))?$"
)
_FILE_QUERY_KEYS = ("type", "format", "size", "fp")


def _positive_int(text: str, what: str, source: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise SourceNotFound(f"{source!r}: {what} {text!r} is not a civitai id (a positive number).\nAccepted forms:\n{ACCEPTED_FORMS}")
    return int(text)


def parse_air(text: str) -> Optional[CivitaiRef]:
    """A civitai AIR (``urn:air:sdxl:lora:civitai:328553@368189``), or None if ``text``
    is no AIR at all.  AIRs of other sources raise with what to use instead."""
    m = _AIR.match(text.strip())
    if not m:
        return None
    if m.group("source") != "civitai":
        raise SourceNotFound(
            f"{text!r} names a {m.group('source')} resource; brushwork pull reads civitai AIRs only. "
            "For a Hugging Face file use hf://OWNER/REPO/path/file.safetensors."
        )
    model = _positive_int(m.group("id"), "the model id", text)
    version = int(m.group("version")) if m.group("version") else None
    file_id = int(m.group("file")) if m.group("file") else None
    return CivitaiRef(model_id=model, version_id=version, file_id=file_id)


def parse_civitai_url(url: str) -> CivitaiRef:
    """A civitai model page or download link (host already known to be civitai's)."""
    parts = urlsplit(url)
    segments = [unquote(s) for s in parts.path.split("/") if s]
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    token = query_token(url)
    shown = strip_token(url)
    if len(segments) >= 2 and segments[0] == "models":
        model = _positive_int(segments[1], "the model id", shown)
        version = query.get("modelVersionId")
        return CivitaiRef(model_id=model, version_id=_positive_int(version, "modelVersionId", shown) if version else None, token=token)
    if len(segments) >= 4 and segments[:3] == ["api", "download", "models"]:
        version = _positive_int(segments[3], "the version id", shown)
        file_query = tuple((k, query[k]) for k in _FILE_QUERY_KEYS if query.get(k))
        file_id = query.get("fileId")
        return CivitaiRef(version_id=version, file_query=file_query, file_id=_positive_int(file_id, "fileId", shown) if file_id else None, token=token)
    if len(segments) >= 4 and segments[:3] == ["api", "v1", "model-versions"] and segments[3].isdigit():
        return CivitaiRef(version_id=int(segments[3]), token=token)
    if len(segments) >= 4 and segments[:3] == ["api", "v1", "models"] and segments[3].isdigit():
        return CivitaiRef(model_id=int(segments[3]), token=token)
    raise SourceNotFound(
        f"{shown} is a civitai link, but not to a model: pass a model page (https://civitai.com/models/ID) "
        "or a download link (https://civitai.com/api/download/models/VERSION_ID)."
    )


def parse_hf_url(url: str) -> HuggingFaceRef:
    """A Hugging Face ``.../blob/REV/path`` or ``.../resolve/REV/path`` URL."""
    parts = urlsplit(url)
    raw = [s for s in parts.path.split("/") if s]
    for marker in ("resolve", "blob"):
        if marker in raw:
            at = raw.index(marker)
            repo, rest = raw[:at], raw[at + 1 :]
            break
    else:
        raise SourceNotFound(
            f"{strip_token(url)} is a Hugging Face page, not a file. Open the file on the repository's "
            "'Files' tab and copy its link (it contains /blob/ or /resolve/), or write hf://OWNER/REPO/path/file.safetensors."
        )
    if repo and repo[0] in ("datasets", "spaces"):
        ok = len(repo) == 3
    else:
        ok = len(repo) in (1, 2)
    if not ok or len(rest) < 2:
        raise SourceNotFound(f"{strip_token(url)}: expected https://huggingface.co/OWNER/REPO/{marker}/REVISION/path/to/file.")
    revision = unquote(rest[0])
    path = "/".join(unquote(s) for s in rest[1:])
    return HuggingFaceRef("/".join(unquote(s) for s in repo), revision, path)


def parse_hf_scheme(text: str) -> HuggingFaceRef:
    """``hf://OWNER/REPO/path/file`` or ``hf://OWNER/REPO@REV/path/file``."""
    body = text[len("hf://") :].strip("/")
    segments = [s for s in body.split("/") if s]
    if len(segments) < 3:
        raise SourceNotFound(f"{text!r}: expected hf://OWNER/REPO/path/to/file.safetensors (optionally hf://OWNER/REPO@REVISION/path/to/file).")
    owner, repo = segments[0], segments[1]
    revision = "main"
    if "@" in repo:
        repo, revision = repo.split("@", 1)
        if not repo or not revision:
            raise SourceNotFound(f"{text!r}: write the revision as hf://OWNER/REPO@REVISION/path/to/file.")
    return HuggingFaceRef(f"{owner}/{repo}", revision, "/".join(segments[2:]))


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def _netloc(url: str) -> str:
    return urlsplit(url).netloc.lower()


def parse_source(text: str, *, starter_names: tuple[str, ...] = (), civitai: str = CIVITAI_DEFAULT, hf: str = HF_DEFAULT) -> SourceRef:
    """The SOURCE the user typed, or :class:`SourceNotFound` listing the accepted forms.

    ``civitai`` / ``hf`` are the configured base URLs: links to their hosts count as
    that service's, as do links to the public hosts."""
    source = (text or "").strip()
    if not source:
        raise SourceNotFound(f"No SOURCE given. Accepted forms:\n{ACCEPTED_FORMS}")
    lowered = source.lower()
    if lowered.startswith("hf://"):
        return parse_hf_scheme(source)
    if lowered.startswith(("http://", "https://")):
        host, netloc = _host(source), _netloc(source)
        if host in CIVITAI_HOSTS:
            return parse_civitai_url(source)
        if host in HF_HOSTS:
            return parse_hf_url(source)
        # a link to the configured mirror itself (BRUSHWORK_CIVITAI_URL / HF_ENDPOINT)
        path = urlsplit(source).path
        if netloc == _netloc(civitai) and path.startswith(("/models/", "/api/download/", "/api/v1/")):
            return parse_civitai_url(source)
        if netloc == _netloc(hf) and ("/resolve/" in path or "/blob/" in path):
            return parse_hf_url(source)
        return UrlRef(source, strip_token(source))
    air = parse_air(source)
    if air is not None:
        return air
    for name in starter_names:
        if lowered == name.lower():
            return StarterRef(name)
    hint = ""
    if starter_names:
        import difflib

        close = difflib.get_close_matches(lowered, [n.lower() for n in starter_names], n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
    if os.path.exists(os.path.expanduser(source)):
        hint += f" {source} is a local file: copy it into the models folder instead (pull downloads)."
    raise SourceNotFound(f"{source!r} is not something brushwork pull understands.{hint}\nAccepted forms:\n{ACCEPTED_FORMS}")


def hf_resolve_url(endpoint: str, ref: HuggingFaceRef, revision: Optional[str] = None) -> str:
    """``{endpoint}/{repo}/resolve/{revision}/{path}``, each part URL-quoted."""
    rev = quote(revision or ref.revision, safe="")
    return f"{endpoint}/{quote(ref.repo, safe='/')}/resolve/{rev}/{quote(ref.path, safe='/')}"


# ---------------------------------------------------------------- file names

_RESERVED = re.compile(r'[<>:"|?*\x00-\x1f\x7f]')
_WINDOWS_DEVICES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


def sanitize_file_name(name: str, fallback: str = "download") -> str:
    """A file name safe to create in a model folder: the last path part only, no
    leading dots or spaces, no characters Windows refuses, at most 200 characters."""
    last = re.split(r"[\\/]", name or "")[-1]
    clean = _RESERVED.sub("_", last).strip().lstrip(". ").rstrip(". ")
    if not clean:
        clean = fallback
    stem, dot, suffix = clean.rpartition(".")
    if dot and stem.lower() in _WINDOWS_DEVICES or (not dot and clean.lower() in _WINDOWS_DEVICES):
        clean = "_" + clean
    if len(clean) > 200:
        stem, dot, suffix = clean.rpartition(".")
        clean = (stem[: 200 - len(suffix) - 1] + "." + suffix) if dot and len(suffix) < 20 else clean[:200]
    return clean


def disposition_file_name(value: Optional[str]) -> Optional[str]:
    """The file name a Content-Disposition header gives (``filename*=`` preferred), or None."""
    if not value:
        return None
    from email.message import Message
    from email.utils import collapse_rfc2231_value

    msg = Message()
    msg["content-disposition"] = value
    try:
        params = msg.get_params(header="content-disposition") or []
    except (ValueError, LookupError):
        return None
    plain = extended = None
    for key, val in params:
        if key.lower() != "filename":
            continue
        if isinstance(val, tuple):  # filename*=UTF-8''... (RFC 5987/2231): preferred
            try:
                extended = collapse_rfc2231_value(val)
            except (LookupError, UnicodeError):
                continue
        elif val:
            plain = val
    return extended or plain or None


def url_file_name(url: str) -> Optional[str]:
    """The last part of ``url``'s path, unquoted, or None."""
    path = urlsplit(url).path
    last = unquote(path.rsplit("/", 1)[-1]) if path else ""
    return last or None


def clash_names(name: str) -> Iterator[str]:
    """``name``, then ``stem-2.ext``, ``stem-3.ext`` ...: the names a pulled file may get
    when a different file already has its name.  A hyphen, not ``stem (2)``: brackets
    and spaces would break prompt syntax such as ``<lora:NAME:0.8>`` and emphasis."""
    yield name
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem:
        stem, suffix = name, ""
    n = 2
    while True:
        yield f"{stem}-{n}" + (f".{suffix}" if suffix else "")
        n += 1


def normalize_kind(kind: Optional[str]) -> Optional[str]:
    """``--kind`` spelled any common way -> one of :data:`KINDS` (None stays None)."""
    if kind is None:
        return None
    k = kind.strip().lower()
    aliases = {"checkpoints": "checkpoint", "model": "checkpoint", "ckpt": "checkpoint", "loras": "lora", "lycoris": "lora", "locon": "lora",
               "dora": "lora", "embeddings": "embedding", "textualinversion": "embedding", "ti": "embedding", "upscalers": "upscaler", "esrgan": "upscaler"}
    k = aliases.get(k, k)
    if k not in KINDS:
        raise PullError(f"--kind {kind!r} is not a model kind; use one of: {', '.join(KINDS)}.")
    return k


def normalize_sha256(value) -> Optional[str]:
    """A sha256 as 64 lower-case hex digits (quotes and ``W/`` dropped), or None."""
    if not isinstance(value, str):
        return None
    v = value.strip()
    if v.startswith("W/"):
        v = v[2:]
    v = v.strip('"').strip().lower()
    return v if re.fullmatch(r"[0-9a-f]{64}", v) else None
