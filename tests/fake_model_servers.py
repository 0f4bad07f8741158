"""Real local HTTP servers that answer like civitai, Hugging Face and plain file hosts.

Each runs a ``ThreadingHTTPServer`` on 127.0.0.1 (port 0) in a thread and records
every request (server, method, path, headers), so tests can check what was asked
where, and that a token reached the API host but never the storage host.

* :class:`Storage`: the "storage"/"CDN" host: serves blobs with ``Range`` (206 +
  ``Content-Range``), ``ETag``, ``Content-Disposition`` (from the presigned-URL style
  ``response-content-disposition`` query, as civitai's R2 links carry), and faults:
  drop the connection after N bytes once, ignore ``Range``, go slowly.
* :class:`FakeCivitai`: ``/api/v1/models/{id}``, ``/api/v1/model-versions/{id}``,
  ``/api/v1/model-versions/by-hash/{hash}`` in civitai's JSON shapes and
  ``/api/download/models/{versionId}`` answering 307 to :class:`Storage`; versions
  that require a login answer 401 with civitai's JSON error without a valid key.
* :class:`FakeHF`: ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: LFS files answer 302
  to the CDN with ``X-Linked-Etag`` / ``X-Linked-Size`` / ``ETag`` / ``X-Repo-Commit``;
  small git files answer 200 with a git-sha1 ``ETag``; gated repositories answer 401
  (no token) or 403 (token without access) with ``X-Error-Code: GatedRepo``.
* :class:`FileServer`: plain file URLs; files on disk are sent with ``os.sendfile``
  (fast enough for the download benchmark).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qsl, quote, unquote, urlsplit


@dataclass
class Seen:
    server: str
    method: str
    path: str
    headers: dict  # lower-case names


@dataclass
class Blob:
    data: Optional[bytes] = None
    path: Optional[Path] = None  # served from disk with sendfile instead of data
    disposition: Optional[str] = None
    etag: Optional[str] = None
    drop_after: Optional[int] = None  # close the connection after this many body bytes (open-ended requests) ...
    drops_left: int = 0  # ... this many times
    ignore_range: bool = False
    delay: float = 0.0  # seconds per 64 KiB sent
    content_type: str = "application/octet-stream"

    @property
    def size(self) -> int:
        return self.path.stat().st_size if self.path is not None else len(self.data or b"")


class _Server:
    """A ThreadingHTTPServer in a thread; subclasses implement ``handle(h, method)``."""

    name = "server"

    def __init__(self, log: Optional[list] = None) -> None:
        self.log: list[Seen] = [] if log is None else log
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _any(self, method):
                with outer.lock:
                    outer.log.append(Seen(outer.name, method, self.path, {k.lower(): v for k, v in self.headers.items()}))
                try:
                    outer.handle(self, method)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def do_GET(self):
                self._any("GET")

            def do_HEAD(self):
                self._any("HEAD")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def requests(self, method: Optional[str] = None, path_start: str = "") -> list[Seen]:
        with self.lock:
            return [r for r in self.log if r.server == self.name and (method is None or r.method == method) and r.path.startswith(path_start)]

    # helpers for handlers
    @staticmethod
    def send_json(h, code: int, obj, headers: Optional[dict] = None) -> None:
        body = json.dumps(obj).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json; charset=utf-8")
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    @staticmethod
    def send_empty(h, code: int, headers: Optional[dict] = None) -> None:
        h.send_response(code)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", "0")
        h.end_headers()


def _parse_range(value: str, size: int) -> Optional[tuple[int, int]]:
    if not value.startswith("bytes=") or "," in value:
        return None
    start_s, _, end_s = value[6:].partition("-")
    if not start_s:
        return None
    start = int(start_s)
    end = int(end_s) if end_s else size - 1
    return start, min(end, size - 1)


def serve_blob(h, blob: Blob, method: str, disposition: Optional[str] = None, extra_headers: Optional[dict] = None) -> None:
    """Answer with ``blob``: Range (206) unless ignored, ETag, Content-Disposition, faults."""
    size = blob.size
    start, end, status = 0, size - 1, 200
    rng = h.headers.get("Range")
    if_range = h.headers.get("If-Range")
    if rng and not blob.ignore_range and (if_range is None or if_range == blob.etag):
        parsed = _parse_range(rng, size)
        if parsed is not None:
            if parsed[0] >= size:
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{size}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            start, end = parsed
            status = 206
    length = end - start + 1
    h.send_response(status)
    h.send_header("Content-Type", blob.content_type)
    h.send_header("Content-Length", str(length))
    h.send_header("Accept-Ranges", "bytes")
    if blob.etag:
        h.send_header("ETag", blob.etag)
    if disposition or blob.disposition:
        h.send_header("Content-Disposition", disposition or blob.disposition)
    if status == 206:
        h.send_header("Content-Range", f"bytes {start}-{end}/{size}")
    for k, v in (extra_headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    if method == "HEAD":
        return
    limit = length
    drop = False
    open_ended = not rng or rng.endswith("-")  # a download, not a bounded probe of the header
    if blob.drop_after is not None and blob.drops_left > 0 and start < blob.drop_after and open_ended:
        blob.drops_left -= 1
        limit = blob.drop_after - start
        drop = True
    if blob.path is not None and not blob.delay:
        with open(blob.path, "rb") as f:
            offset, left = start, limit
            while left > 0:
                sent = os.sendfile(h.connection.fileno(), f.fileno(), offset, min(left, 1 << 30))
                if sent == 0:
                    break
                offset += sent
                left -= sent
    else:
        data = blob.data if blob.data is not None else blob.path.read_bytes()
        pos = start
        stop = start + limit
        while pos < stop:
            piece = data[pos : min(stop, pos + 65536)]
            h.wfile.write(piece)
            pos += len(piece)
            if blob.delay:
                h.wfile.flush()
                time.sleep(blob.delay)
    h.wfile.flush()
    if drop:
        h.close_connection = True
        try:
            import socket

            h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class Storage(_Server):
    """The storage / CDN host: ``/files/KEY`` blobs."""

    name = "storage"

    def __init__(self, log=None, name: str = "storage") -> None:
        self.name = name
        self.blobs: dict[str, Blob] = {}
        super().__init__(log)

    def add(self, key: str, data: bytes, **options) -> str:
        self.blobs[key] = Blob(data=data, etag=options.pop("etag", f'"{hashlib.md5(data).hexdigest()}"'), **options)
        return f"{self.url}/files/{quote(key)}"

    def handle(self, h, method) -> None:
        parts = urlsplit(h.path)
        key = unquote(parts.path.removeprefix("/files/"))
        blob = self.blobs.get(key)
        if blob is None:
            self.send_json(h, 404, {"error": "NoSuchKey"})
            return
        query = dict(parse_qsl(parts.query))
        serve_blob(h, blob, method, query.get("response-content-disposition"))


# ---------------------------------------------------------------- civitai


@dataclass
class CivitaiFile:
    id: int
    name: str
    data: bytes
    type: str = "Model"
    format: str = "SafeTensor"
    fp: str = "fp16"
    size: str = "pruned"
    primary: bool = True
    published_sha256: Optional[str] = None  # None: the true hash (upper-case, as civitai sends it)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class CivitaiVersion:
    id: int
    name: str
    files: list[CivitaiFile]
    base_model: str = "SD 1.5"
    trained_words: list[str] = field(default_factory=list)
    images: list[bytes] = field(default_factory=list)
    login_required: bool = False
    login_style: str = "401"  # or "redirect": to the login page, as civitai did before 2024


@dataclass
class CivitaiModel:
    id: int
    name: str
    type: str
    versions: list[CivitaiVersion]  # newest first


class FakeCivitai(_Server):
    """civitai's API host; files and images live on :attr:`storage`."""

    name = "civitai"

    def __init__(self, tokens: tuple[str, ...] = ("good-civitai-key",)) -> None:
        self.models: dict[int, CivitaiModel] = {}
        self.tokens = set(tokens)
        super().__init__()
        self.storage = Storage(self.log)
        self.image_urls: dict[tuple[int, int], str] = {}

    def close(self) -> None:
        super().close()
        self.storage.close()

    def add(self, model: CivitaiModel) -> CivitaiModel:
        self.models[model.id] = model
        for v in model.versions:
            for f in v.files:
                self.storage.add(f"model/{v.id}/{f.id}", f.data)
            for i, img in enumerate(v.images):
                self.image_urls[(v.id, i)] = self.storage.add(f"images/{v.id}-{i}.jpeg", img, content_type="image/jpeg")
        return model

    def _version(self, version_id: int) -> Optional[tuple[CivitaiModel, CivitaiVersion]]:
        for m in self.models.values():
            for v in m.versions:
                if v.id == version_id:
                    return m, v
        return None

    def file_json(self, v: CivitaiVersion, f: CivitaiFile) -> dict:
        q = f"?type={quote(f.type)}&format={f.format}"
        sha = (f.published_sha256 or f.sha256).upper()
        return {
            "id": f.id, "sizeKB": len(f.data) / 1024, "name": f.name, "type": f.type,
            "pickleScanResult": "Success", "virusScanResult": "Success", "scannedAt": "2024-01-01T00:00:00.000Z",
            "metadata": {"format": f.format, "size": f.size, "fp": f.fp},
            "hashes": {"AutoV2": sha[:10], "SHA256": sha, "CRC32": "00000000", "BLAKE3": "0" * 64},
            "primary": f.primary,
            "downloadUrl": f"https://civitai.com/api/download/models/{v.id}{q}",
        }

    def version_json(self, m: CivitaiModel, v: CivitaiVersion, with_model: bool = True) -> dict:
        out = {
            "id": v.id, "modelId": m.id, "name": v.name, "createdAt": "2024-01-01T00:00:00.000Z",
            "baseModel": v.base_model, "baseModelType": "Standard", "trainedWords": v.trained_words,
            "air": f"urn:air:sd1:{m.type.lower()}:civitai:{m.id}@{v.id}", "status": "Published",
            "stats": {"downloadCount": 1, "thumbsUpCount": 1},
            "files": [self.file_json(v, f) for f in v.files],
            "images": [{"url": self.image_urls[(v.id, i)], "nsfwLevel": 1, "width": 8, "height": 8, "hash": "U00000", "type": "image"}
                       for i in range(len(v.images))],
            "downloadUrl": f"https://civitai.com/api/download/models/{v.id}",
        }
        if with_model:
            out["model"] = {"name": m.name, "type": m.type, "nsfw": False, "poi": False}
        return out

    def _authorized(self, h) -> Optional[bool]:
        """None: no key sent; True/False: a key that is / is not valid."""
        auth = h.headers.get("Authorization", "")
        query = dict(parse_qsl(urlsplit(h.path).query))
        key = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else query.get("token")
        if not key:
            return None
        return key in self.tokens

    def handle(self, h, method) -> None:
        parts = urlsplit(h.path)
        seg = [s for s in parts.path.split("/") if s]
        query = dict(parse_qsl(parts.query))
        if seg[:3] == ["api", "v1", "models"] and len(seg) == 4 and seg[3].isdigit():
            m = self.models.get(int(seg[3]))
            if m is None:
                self.send_json(h, 404, {"error": f"No model with id {seg[3]}"})
                return
            body = {"id": m.id, "name": m.name, "description": "<p>test</p>", "type": m.type, "nsfw": False,
                    "tags": [], "creator": {"username": "tester"},
                    "modelVersions": [self.version_json(m, v, with_model=False) for v in m.versions]}
            self.send_json(h, 200, body)
            return
        if seg[:4] == ["api", "v1", "model-versions", "by-hash"] and len(seg) == 5:
            want = seg[4].upper()
            for m in self.models.values():
                for v in m.versions:
                    for f in v.files:
                        if f.sha256.upper() == want or f.sha256.upper()[:10] == want:
                            self.send_json(h, 200, self.version_json(m, v))
                            return
            self.send_json(h, 404, {"error": "Model not found"})
            return
        if seg[:3] == ["api", "v1", "model-versions"] and len(seg) == 4 and seg[3].isdigit():
            found = self._version(int(seg[3]))
            if found is None:
                self.send_json(h, 404, {"error": f"Version not found"})
                return
            self.send_json(h, 200, self.version_json(*found))
            return
        if seg[:3] == ["api", "download", "models"] and len(seg) == 4 and seg[3].isdigit():
            found = self._version(int(seg[3]))
            if found is None:
                self.send_json(h, 404, {"error": "Model not found"})
                return
            m, v = found
            ok = self._authorized(h)
            if v.login_required and not ok:
                if v.login_style == "redirect":
                    self.send_empty(h, 307, {"Location": f"{self.url}/login?returnUrl=%2Fmodel-versions%2F{v.id}&reason=download-auth"})
                    return
                msg = "The creator of this asset requires you to be logged in to download it" if ok is None else "Invalid API key"
                self.send_json(h, 401, {"error": "Unauthorized", "message": msg})
                return
            if "fileId" in query:
                candidates = [f for f in v.files if str(f.id) == query["fileId"]]
            else:
                candidates = [f for f in v.files if all(str(getattr(f, k)).lower() == query[k].lower() for k in ("type", "format") if k in query)]
            chosen = next((f for f in candidates if f.primary), candidates[0] if candidates else None)
            if chosen is None:
                self.send_json(h, 404, {"error": "File not found"})
                return
            disposition = quote(f'attachment; filename="{chosen.name}"')
            location = f"{self.storage.url}/files/{quote(f'model/{v.id}/{chosen.id}')}?X-Amz-Expires=86400&response-content-disposition={disposition}&X-Amz-Signature=abc"
            self.send_empty(h, 307, {"Location": location})
            return
        if seg[:1] == ["login"]:
            body = b"<!doctype html><html><body>Log in</body></html>"
            h.send_response(200)
            h.send_header("Content-Type", "text/html; charset=utf-8")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            return
        self.send_json(h, 404, {"error": "Not found"})


# ---------------------------------------------------------------- Hugging Face


@dataclass
class HFFile:
    data: bytes
    lfs: bool = True


@dataclass
class HFRepo:
    files: dict[str, HFFile]  # path -> file
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    revisions: tuple[str, ...] = ("main",)
    gated: bool = False
    granted: tuple[str, ...] = ()  # tokens that accepted the terms


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHF(_Server):
    """The Hub (``/{repo}/resolve/{rev}/{path}``); LFS bytes live on :attr:`cdn`."""

    name = "hf"

    def __init__(self, tokens: tuple[str, ...] = ("hf_good",)) -> None:
        self.repos: dict[str, HFRepo] = {}
        self.tokens = set(tokens)
        super().__init__()
        self.cdn = Storage(self.log, name="cdn")

    def close(self) -> None:
        super().close()
        self.cdn.close()

    def add(self, repo: str, entry: HFRepo) -> HFRepo:
        self.repos[repo] = entry
        for path, f in entry.files.items():
            if f.lfs:
                self.cdn.add(f"{repo}/{entry.commit}/{path}", f.data, etag=f'"{hashlib.sha256(f.data).hexdigest()}"')
        return entry

    def handle(self, h, method) -> None:
        parts = urlsplit(h.path)
        seg = [unquote(s) for s in parts.path.split("/") if s]
        if "resolve" not in seg:
            self.send_empty(h, 404)
            return
        at = seg.index("resolve")
        repo_id, rev, path = "/".join(seg[:at]), seg[at + 1], "/".join(seg[at + 2 :])
        token = h.headers.get("Authorization", "").removeprefix("Bearer ").strip() or None
        repo = self.repos.get(repo_id)
        if repo is None:
            code = 404 if token in self.tokens else 401
            self.send_empty(h, code, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
            return
        if repo.gated:
            if token not in self.tokens:
                self.send_empty(h, 401, {"X-Error-Code": "GatedRepo", "X-Error-Message": f"Access to model {repo_id} is restricted. You must have access to it and be authenticated to access it. Please log in."})
                return
            if token not in repo.granted:
                self.send_empty(h, 403, {"X-Error-Code": "GatedRepo", "X-Error-Message": f"Access to model {repo_id} is restricted and you are not in the authorized list. Visit https://huggingface.co/{repo_id} to ask for access."})
                return
        if rev not in repo.revisions and rev != repo.commit:
            self.send_empty(h, 404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": f"Invalid rev id: {rev}"})
            return
        f = repo.files.get(path)
        if f is None:
            self.send_empty(h, 404, {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"})
            return
        name = path.rsplit("/", 1)[-1]
        if f.lfs:
            sha = hashlib.sha256(f.data).hexdigest()
            disposition = quote(f"inline; filename*=UTF-8''{name}; filename=\"{name}\";")
            location = f"{self.cdn.url}/files/{quote(f'{repo_id}/{repo.commit}/{path}')}?response-content-disposition={disposition}&Expires=1&Signature=x"
            self.send_empty(h, 302, {"Location": location, "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(f.data)),
                                     "ETag": f'"{sha}"', "X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes"})
            return
        blob = Blob(data=f.data, etag=f'"{git_blob_sha1(f.data)}"', disposition=f"inline; filename*=UTF-8''{name}; filename=\"{name}\";")
        serve_blob(h, blob, method, extra_headers={"X-Repo-Commit": repo.commit})


# ---------------------------------------------------------------- plain files


class FileServer(_Server):
    """Plain file URLs: ``/PATH`` -> a blob (in memory or on disk, sent with sendfile)."""

    name = "files"

    def __init__(self) -> None:
        self.blobs: dict[str, Blob] = {}
        super().__init__()

    def add(self, path: str, data: bytes, **options) -> str:
        self.blobs["/" + path.lstrip("/")] = Blob(data=data, etag=options.pop("etag", f'"{hashlib.sha1(data).hexdigest()}"'), **options)
        return f"{self.url}/{path.lstrip('/')}"

    def add_disk(self, path: str, file: Path, **options) -> str:
        st = file.stat()
        self.blobs["/" + path.lstrip("/")] = Blob(path=file, etag=options.pop("etag", f'"{st.st_size:x}-{int(st.st_mtime):x}"'), **options)
        return f"{self.url}/{path.lstrip('/')}"

    def handle(self, h, method) -> None:
        blob = self.blobs.get(urlsplit(h.path).path)
        if blob is None:
            self.send_empty(h, 404)
            return
        serve_blob(h, blob, method)


# ---------------------------------------------------------------- tiny model files


def tiny_lora(seed: int = 0, family: str = "sd1", rank: int = 4, width: int = 64, layers: int = 4) -> bytes:
    """A real kohya-style LoRA file (lora_down / lora_up / alpha), a few tens of KB."""
    import torch
    from safetensors.torch import save

    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(layers):
        key = f"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_{'qkvo'[i % 4]}{i // 4 or ''}"
        tensors[f"{key}.lora_down.weight"] = torch.randn(rank, width, generator=g)
        tensors[f"{key}.lora_up.weight"] = torch.randn(width, rank, generator=g)
        tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    base = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}[family]
    meta = {"ss_base_model_version": base, "ss_tag_frequency": json.dumps({"1_set": {"balloon": 5, "red": 2}})}
    return save(tensors, metadata=meta)


def tiny_embedding(vectors: int = 2, width: int = 768) -> bytes:
    import torch
    from safetensors.torch import save

    return save({"emb_params": torch.zeros(vectors, width)})


def tiny_vae() -> bytes:
    import torch
    from safetensors.torch import save

    return save({
        "encoder.conv_in.weight": torch.zeros(8, 3, 3, 3), "encoder.conv_out.weight": torch.zeros(8, 8, 3, 3),
        "decoder.conv_in.weight": torch.zeros(8, 4, 3, 3), "decoder.conv_out.weight": torch.zeros(3, 8, 3, 3),
        "quant_conv.weight": torch.zeros(8, 8, 1, 1), "post_quant_conv.weight": torch.zeros(4, 4, 1, 1),
    })


def jpeg(color=(200, 30, 30), size=(16, 12)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()
