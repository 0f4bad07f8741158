"""Routes of the Models page (under ``/api/v1``): what is installed, the starter list,
pulling a model with live progress, a model's saved defaults, and removing a file to
the trash.  Routes validate and translate; the work is in ``brushwork.fetch``,
``brushwork.model_defaults`` and ``brushwork.inventory``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse  # noqa: F401 - the events route's type
from pydantic import BaseModel, ConfigDict, Field

from ..catalog import find_listed_checkpoint, inspect_checkpoint
from ..request import MAX_CLIP_SKIP, MAX_SIDE, MAX_STEPS, MIN_SIDE
from .downloads import Downloads
from .schemas import BadRequest, public_path, public_text
from .studio import Conflict, NotFound, Studio

KindName = Literal["checkpoint", "lora", "embedding", "vae", "upscaler"]


class PullBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    source: str = Field(..., min_length=1, max_length=2048, description="a civitai or Hugging Face URL, an AIR, hf://owner/repo/file, an https URL or a starter-list name")
    kind: Optional[KindName] = Field(None, description="where the file goes when the source does not say (Hugging Face, plain URLs)")
    token: Optional[str] = Field(None, max_length=512, description="a civitai or Hugging Face token for this pull only (else CIVITAI_TOKEN / HF_TOKEN on the server)")


class DefaultsBody(BaseModel):
    """A model's own defaults: the fields sent are saved (null removes one)."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(..., min_length=1, max_length=512)
    steps: Optional[int] = Field(None, ge=1, le=MAX_STEPS)
    cfg_scale: Optional[float] = Field(None, ge=0, le=30)
    sampler: Optional[str] = Field(None, max_length=64)
    schedule: Optional[str] = Field(None, max_length=64)
    width: Optional[int] = Field(None, ge=MIN_SIDE, le=MAX_SIDE)
    height: Optional[int] = Field(None, ge=MIN_SIDE, le=MAX_SIDE)
    clip_skip: Optional[int] = Field(None, ge=1, le=MAX_CLIP_SKIP)


class RemoveBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    kind: KindName
    name: str = Field(..., min_length=1, max_length=512)
    confirm: bool = Field(False, description="must be true: the file and its sidecars go to the data home's trash folder")


def downloads_for(studio: Studio) -> Downloads:
    """The studio's downloads (made on first use, closed with the studio)."""
    found = getattr(studio, "downloads", None)
    if found is None:
        home = studio.home

        def name_of(path: Path, kind: str) -> str:
            if kind == "checkpoint":
                try:
                    return studio._entry_name(path)
                except OSError:
                    return path.stem
            return path.stem

        found = studio.downloads = Downloads(home, public_path=lambda p: public_path(home, p), public_text=lambda t: public_text(home, t), name_of=name_of)
    return found


def defaults_view(studio: Studio, model: str) -> dict[str, Any]:
    """A checkpoint's effective defaults, where each value comes from, and what is saved."""
    from ..model_defaults import effective_defaults, saved_defaults

    path = find_listed_checkpoint(studio.home, model)
    loaded = studio.engine.model
    spec = loaded.spec if loaded is not None and loaded.path == path else inspect_checkpoint(path)
    eff = effective_defaults(studio.home, path, spec)
    return {"model": studio._entry_name(path), "values": eff.values, "sources": eff.sources, "saved": saved_defaults(studio.home, path)}


def installed_view(studio: Studio, m) -> dict[str, Any]:
    view = {"kind": m.kind, "name": m.name, "file": m.path.name, "path": public_path(studio.home, m.path),  # a linked install's file: its name only, as everywhere in the API
            "size": m.size, "family": m.family, "sha256": m.sha256, "hash": m.sha256[:10] if m.sha256 else None, "where": m.where, "removable": m.removable}
    if m.kind == "checkpoint":
        from ..model_defaults import saved_defaults

        view["saved_defaults"] = saved_defaults(studio.home, m.path)
        view["current"] = m.name == studio.model_name()
    return view


def models_router(studio: Studio) -> APIRouter:
    from .app import KeepAliveRoute, client_of, event_stream, last_event_id

    r = APIRouter(prefix="/api/v1", tags=["models"], route_class=KeepAliveRoute)
    downloads = downloads_for(studio)

    @r.get("/models/installed")
    def installed(kind: Optional[KindName] = None) -> dict[str, Any]:
        """Every model file of the data home and the linked installs, by kind."""
        from ..inventory import KINDS, installed_models, trash_folder

        home = studio.home
        kinds = (kind,) if kind else KINDS
        folders = {"checkpoint": home.checkpoint_dirs, "lora": home.lora_dirs, "embedding": home.embedding_dirs, "vae": home.vae_dirs, "upscaler": home.upscaler_dirs}
        return {"models": [installed_view(studio, m) for m in installed_models(home, kinds)],
                "folders": {k: public_path(home, folders[k][0]) for k in kinds}, "trash": public_path(home, trash_folder(home))}

    @r.get("/models/starter")
    def starter() -> list[dict[str, Any]]:
        """The starter list shipped with Brushwork, each with installed or not."""
        from ..fetch import starter_status

        out = []
        for entry, path in starter_status(studio.home):
            d = {k: getattr(entry, k, None) for k in ("name", "kind", "family", "size", "source", "sha256", "description", "file_name")}
            d.update(installed=path is not None, path=public_path(studio.home, path) if path is not None else None)
            out.append(d)
        return out

    @r.post("/models/pull", status_code=202)
    def pull(body: PullBody, request: Request) -> dict[str, Any]:
        """Start a download (see GET /downloads/{id} and its events for progress);
        text that is no source form at all is a 400 listing the forms."""
        from ..fetch import PullError, check_source

        try:
            check_source(body.source)
        except PullError as exc:
            raise BadRequest(str(exc), "source") from None
        return downloads.start(body.source, body.kind, body.token, client_of(request)).view()

    @r.get("/downloads")
    def download_list() -> list[dict[str, Any]]:
        return [d.view() for d in downloads.list()]

    @r.get("/downloads/{download_id}")
    def download(download_id: str) -> dict[str, Any]:
        return downloads.get(download_id).view()

    @r.post("/downloads/{download_id}/cancel")
    def cancel_download(download_id: str) -> dict[str, Any]:
        return downloads.cancel(download_id).view()

    @r.get("/downloads/{download_id}/events")
    async def download_events(download_id: str, request: Request) -> StreamingResponse:
        downloads.get(download_id)  # 404 before the stream starts
        start = last_event_id(request)

        return event_stream(downloads.stream(download_id, after=start), lambda data: data)  # downloads' texts are public already

    @r.get("/models/defaults")
    def get_defaults(model: str = Query(..., min_length=1, max_length=512)) -> dict[str, Any]:
        """A checkpoint's defaults: ``values`` and their ``sources`` ("saved", "metadata", "family")."""
        return defaults_view(studio, model)

    @r.put("/models/defaults")
    def put_defaults(body: DefaultsBody) -> dict[str, Any]:
        """Save settings as a checkpoint's own defaults (the fields sent; null removes one)."""
        from ..model_defaults import save_defaults
        from ..request import RequestError

        path = find_listed_checkpoint(studio.home, body.model)
        values = {k: getattr(body, k) for k in body.model_fields_set if k != "model"}
        if not values:
            raise BadRequest("send at least one of steps, cfg_scale, sampler, schedule, width, height, clip_skip", "model")
        try:
            save_defaults(studio.home, path, values)
        except (RequestError, ValueError) as exc:
            raise BadRequest(str(exc), next(iter(values))) from None
        return defaults_view(studio, body.model)

    @r.delete("/models/defaults")
    def delete_defaults(model: str = Query(..., min_length=1, max_length=512)) -> dict[str, Any]:
        from ..model_defaults import clear_defaults

        clear_defaults(studio.home, find_listed_checkpoint(studio.home, model))
        return defaults_view(studio, model)

    @r.post("/models/remove")
    def remove(body: RemoveBody) -> dict[str, Any]:
        """Move a model file and its sidecars to the data home's trash (never deleted)."""
        from ..inventory import InventoryError, find_installed, move_to_trash

        if not body.confirm:
            raise BadRequest("removing a model needs confirm: true (the file and its sidecars go to the trash folder in the data home)", "confirm")
        try:
            model = find_installed(studio.home, body.kind, body.name)
        except InventoryError as exc:
            raise NotFound(str(exc)) from None
        if body.kind == "checkpoint":
            loaded = studio.engine.model
            if model.name == studio.model_name() or (loaded is not None and loaded.path == model.path):
                raise Conflict(f"{model.name} is the model in use; switch to another model first, then remove it")
        try:
            moved = move_to_trash(studio.home, model)
        except InventoryError as exc:
            raise Conflict(str(exc)) from None
        return {"removed": model.name, "kind": model.kind, "moved": [public_path(studio.home, p) for p in moved]}

    return r
