"""The parts of a Flux model, wherever the user keeps them.

Flux comes in two shapes. An all-in-one file (civitai, ComfyUI's saved checkpoints)
holds the transformer, the autoencoder (``vae.``) and both text encoders
(``text_encoders.clip_l.transformer.``, ``text_encoders.t5xxl.transformer.``). A
split model is a transformer file (BFL's ``flux1-dev.safetensors``, a GGUF file) in
the checkpoints folder (or ComfyUI's ``models/unet`` / ``models/diffusion_models``),
with ``ae.safetensors`` in ``models/vae`` and ``clip_l`` and ``t5xxl`` files in
``models/text_encoders`` (A1111/Forge: ``models/text_encoder``, ComfyUI:
``models/clip``).

:func:`find_parts` finds each part: inside the file first, then in the folders, by
the tensors' shapes (a T5 as wide as the transformer's text input, a CLIP-L as wide
as its pooled input, a 16-channel autoencoder), preferring the usual file names.
Only headers are read.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from .errors import ModelFileError
from .flux import FluxSpec, Shapes, flux_vae_prefix

T5_PREFIXES = ("text_encoders.t5xxl.transformer.", "")
CLIP_PREFIXES = ("text_encoders.clip_l.transformer.", "")
T5_MARKER = "encoder.block.0.layer.0.SelfAttention.q.weight"
CLIP_MARKER = "text_model.encoder.layers.0.self_attn.q_proj.weight"
PART_LABELS = {"vae": "ae (the autoencoder)", "clip_l": "clip_l (the CLIP-L text encoder)", "t5xxl": "t5xxl (the T5-XXL text encoder)"}
#: where each part is looked for, and the file people download for it
PART_HOMES = {"vae": ("models/vae", "ae.safetensors"), "clip_l": ("models/text_encoders", "clip_l.safetensors"), "t5xxl": ("models/text_encoders", "t5xxl_fp16.safetensors or t5xxl_fp8_e4m3fn.safetensors")}
#: name hints: a file whose name holds one of these is tried first for the part
NAME_HINTS = {"vae": ("ae", "flux"), "clip_l": ("clip_l", "clip-l"), "t5xxl": ("t5xxl", "t5")}


@dataclass(frozen=True)
class PartFile:
    path: Path
    prefix: str  # the part's keys sit under this prefix in the file
    inside: bool = False  # part of the transformer's own file


@dataclass(frozen=True)
class FluxParts:
    transformer: Path
    spec: FluxSpec
    vae: Optional[PartFile]
    clip_l: Optional[PartFile]
    t5xxl: Optional[PartFile]

    def missing(self) -> list[str]:
        return [name for name in ("vae", "clip_l", "t5xxl") if getattr(self, name) is None]

    @property
    def all_in_one(self) -> bool:
        return all(p is not None and p.inside for p in (self.vae, self.clip_l, self.t5xxl))

    def summary(self) -> str:
        """One line for listings: the variant and which parts were found where."""
        if self.all_in_one:
            return f"{self.spec.label} (all in one file)"
        found = [f"{name}: {getattr(self, name).path.name}" for name in ("vae", "clip_l", "t5xxl") if getattr(self, name) is not None]
        missing = self.missing()
        text = f"{self.spec.label}" + (f" ({', '.join(found)})" if found else "")
        return text + (f"; missing {', '.join(missing)}" if missing else "")

    def require(self) -> None:
        """Raise :class:`ModelFileError` naming every missing part and where to put it."""
        missing = self.missing()
        if not missing:
            return
        lines = [f"{PART_LABELS[m]}: put {PART_HOMES[m][1]} in {PART_HOMES[m][0]} of the data home" for m in missing]
        raise ModelFileError(
            f"{self.transformer.name} is a {self.spec.label} transformer on its own, and Brushwork did not find the other parts of the model: "
            + "; ".join(lines) + ". (An all-in-one Flux checkpoint has them inside; `brushwork models` lists what was found.)"
        )


def t5_width(shapes: Shapes, prefix: str) -> Optional[int]:
    shape = shapes.get(prefix + T5_MARKER)
    return int(shape[1]) if shape is not None and len(shape) == 2 else None


def clip_width(shapes: Shapes, prefix: str) -> Optional[int]:
    shape = shapes.get(prefix + CLIP_MARKER)
    return int(shape[1]) if shape is not None and len(shape) == 2 else None


def _prefix_of(shapes: Shapes, prefixes: Iterable[str], fits: Callable[[Shapes, str], bool]) -> Optional[str]:
    for prefix in prefixes:
        if fits(shapes, prefix):
            return prefix
    return None


def part_prefix(part: str, shapes: Shapes, spec: FluxSpec) -> Optional[str]:
    """Where ``part`` sits in a file with ``shapes`` when it fits ``spec``, else None."""
    if part == "vae":
        return flux_vae_prefix(shapes)
    if part == "t5xxl":
        return _prefix_of(shapes, T5_PREFIXES, lambda s, p: t5_width(s, p) == spec.context)
    return _prefix_of(shapes, CLIP_PREFIXES, lambda s, p: clip_width(s, p) == spec.pooled)


def _ordered(files: list[Path], part: str) -> list[Path]:
    hints = NAME_HINTS[part]
    return sorted(files, key=lambda p: (not any(h in p.stem.lower() for h in hints), p.name.lower(), str(p)))


def find_parts(transformer: Path, shapes: Shapes, spec: FluxSpec, folders: dict[str, list[Path]], read_shapes: Callable[[Path], Optional[Shapes]]) -> FluxParts:
    """Each part of the model: inside ``transformer``'s own file (``shapes``), else the
    first fitting file in ``folders`` ({"vae": [...], "text_encoders": [...]}); ``read_shapes``
    reads a candidate's tensor shapes (None: not a readable tensor file)."""
    found: dict[str, Optional[PartFile]] = {}
    listed: dict[str, list[Path]] = {}  # each folder kind walked once
    read: dict[Path, Optional[Shapes]] = {}  # each candidate's header read once (clip_l and t5xxl share a folder)
    for part in ("vae", "clip_l", "t5xxl"):
        inside = part_prefix(part, shapes, spec)
        if inside is not None:
            found[part] = PartFile(transformer, inside, inside=True)
            continue
        found[part] = None
        kind = "vae" if part == "vae" else "text_encoders"
        if kind not in listed:
            listed[kind] = [p for folder in folders.get(kind, []) if folder.is_dir() for p in folder.rglob("*.safetensors") if p.resolve() != transformer.resolve()]
        for path in _ordered(listed[kind], part):
            if path not in read:
                read[path] = read_shapes(path)
            other = read[path]
            prefix = part_prefix(part, other, spec) if other is not None else None
            if prefix is not None:
                found[part] = PartFile(path, prefix)
                break
    return FluxParts(transformer, spec, found["vae"], found["clip_l"], found["t5xxl"])
