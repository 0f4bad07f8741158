"""What a model file is, from its safetensors header alone, and where each kind goes.

Used when the source does not say (Hugging Face files, plain URLs): only the header
is fetched (HTTP ``Range``), the tensor names and shapes decide:

* LoRA / LyCORIS: ``lora_up`` / ``lora_down`` (kohya), ``lora_A`` / ``lora_B``
  (diffusers / PEFT), ``hada_`` (LoHa), ``lokr_`` (LoKr) parts;
* textual-inversion embedding: ``emb_params``, ``string_to_param``, or SDXL's
  ``clip_l`` + ``clip_g`` pair, and nothing else;
* VAE: ``encoder.`` / ``decoder.`` (optionally ``first_stage_model.``) and no UNet;
* checkpoint: :func:`brushwork.models.detect.detect` accepts the shapes (family too).

Anything else is refused with a message suggesting ``--kind``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from .sources import KINDS, PullError

KIND_LABELS = {"checkpoint": "checkpoint", "lora": "LoRA", "embedding": "textual-inversion embedding", "vae": "VAE", "upscaler": "upscaler"}

#: civitai's model ``type`` values -> our kinds (the others cannot be used by Brushwork)
CIVITAI_TYPES = {
    "checkpoint": "checkpoint",
    "lora": "lora",
    "locon": "lora",
    "lycoris": "lora",
    "dora": "lora",
    "textualinversion": "embedding",
    "vae": "vae",
    "upscaler": "upscaler",
}

_LORA_PARTS = (".lora_up.", ".lora_down.", ".lora_A.", ".lora_B.", ".lora_mid.", ".hada_w1_a", ".hada_w2_a", ".lokr_w1", ".lokr_w2")
_EMBEDDING_KEYS = {"emb_params", "string_to_param", "clip_l", "clip_g", "string_to_token", "name", "step"}
_UNET_PREFIXES = ("model.diffusion_model.", "down_blocks.", "up_blocks.", "mid_block.", "input_blocks.", "output_blocks.")


@dataclass(frozen=True)
class Classified:
    kind: str
    family: Optional[str] = None  # sd1 | sd2 | sdxl when the header tells


def kind_folder(home, kind: str) -> Path:
    """The folder a pulled file of ``kind`` goes into (the data home's first one)."""
    folders = {"checkpoint": home.checkpoint_dirs, "lora": home.lora_dirs, "embedding": home.embedding_dirs,
               "vae": home.vae_dirs, "upscaler": home.upscaler_dirs}
    if kind not in folders:
        raise PullError(f"Unknown model kind {kind!r}; expected one of {', '.join(KINDS)}.")
    return folders[kind][0]


def kind_folders(home, kind: str) -> list[Path]:
    """All folders files of ``kind`` are read from (A1111's names too)."""
    return {"checkpoint": home.checkpoint_dirs, "lora": home.lora_dirs, "embedding": home.embedding_dirs,
            "vae": home.vae_dirs, "upscaler": home.upscaler_dirs}[kind]


def civitai_kind(model_type: Optional[str], file_type: Optional[str] = None) -> Optional[str]:
    """Our kind for civitai's model ``type`` (and a file's own ``type``: a
    checkpoint version may carry a separate ``VAE`` file), or None if Brushwork
    cannot use that type."""
    if (file_type or "").strip().lower() == "vae":
        return "vae"
    return CIVITAI_TYPES.get((model_type or "").strip().lower())


def _shapes(header: Mapping) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for key, entry in header.items():
        if key == "__metadata__" or not isinstance(entry, Mapping):
            continue
        shape = entry.get("shape")
        if isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            shapes[str(key)] = tuple(shape)
    return shapes


def _metadata(header: Mapping) -> dict[str, str]:
    meta = header.get("__metadata__")
    return {str(k): v for k, v in meta.items() if isinstance(v, str)} if isinstance(meta, Mapping) else {}


def looks_like_lora(keys) -> bool:
    keys = list(keys)
    hits = sum(1 for k in keys if any(p in "." + k for p in _LORA_PARTS) or k.startswith(("lora_unet_", "lora_te")))
    return bool(keys) and hits / len(keys) > 0.5


def looks_like_embedding(keys) -> bool:
    keys = set(keys)
    return bool(keys) and keys <= _EMBEDDING_KEYS and bool(keys & {"emb_params", "string_to_param", "clip_l", "clip_g"})


def looks_like_vae(keys) -> bool:
    keys = [k.removeprefix("first_stage_model.") for k in keys]
    if not keys or any(k.startswith(_UNET_PREFIXES) for k in keys):
        return False
    vae = sum(1 for k in keys if k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")))
    return vae / len(keys) > 0.9 and any(k.startswith("decoder.") for k in keys)


def classify_header(header: Mapping, name: str = "the file") -> Classified:
    """The kind (and family, when it shows) of a safetensors file from its header;
    :class:`PullError` suggesting ``--kind`` when it cannot be told."""
    shapes = _shapes(header)
    metadata = _metadata(header)
    if not shapes:
        raise PullError(f"{name} holds no tensors Brushwork recognises; if you know what it is, pass --kind ({', '.join(KINDS)}).")
    if looks_like_lora(shapes):
        return Classified("lora", _lora_family(metadata))
    if looks_like_embedding(shapes):
        family = "sdxl" if "clip_g" in shapes else ({768: "sd1", 1024: "sd2"}.get(_last_dim(shapes)))
        return Classified("embedding", family)
    if looks_like_vae(shapes):
        return Classified("vae", None)
    if any(k.startswith("model.diffusion_model.") for k in shapes):
        from ..models.detect import detect  # imports torch: only for checkpoint-looking files
        from ..models.errors import UnsupportedModel

        try:
            spec = detect(shapes, metadata, None, name=name)
        except UnsupportedModel as exc:
            raise PullError(f"{exc} It was not downloaded. If you want it anyway, pass --kind ({', '.join(KINDS)}).") from None
        return Classified("checkpoint", spec.family)
    raise PullError(
        f"Cannot tell what {name} is from its tensors (not a checkpoint, LoRA, embedding or VAE Brushwork knows). "
        f"If you know, pass --kind ({', '.join(KINDS)}); upscaler files need --kind upscaler."
    )


def _last_dim(shapes: Mapping[str, tuple[int, ...]]) -> Optional[int]:
    for key in ("emb_params", "string_to_param"):
        if key in shapes and shapes[key]:
            return shapes[key][-1]
    return None


def _lora_family(metadata: Mapping[str, str]) -> Optional[str]:
    base = str(metadata.get("ss_base_model_version", ""))
    v2 = str(metadata.get("ss_v2", ""))
    arch = str(metadata.get("modelspec.architecture", "")).lower()
    if base.startswith("sdxl") or arch.startswith("stable-diffusion-xl"):
        return "sdxl"
    if v2 == "True" or base.startswith("sd_v2") or arch.startswith("stable-diffusion-v2"):
        return "sd2"
    if base.startswith("sd_v1") or v2 == "False" or arch.startswith("stable-diffusion-v1"):
        return "sd1"
    return None


def family_of_base_model(base_model: Optional[str]) -> Optional[str]:
    """sd1 / sd2 / sdxl for civitai's ``baseModel`` ("SD 1.5", "SDXL 1.0", "Pony" ...)."""
    b = (base_model or "").strip().lower()
    if b.startswith("sd 1"):
        return "sd1"
    if b.startswith("sd 2"):
        return "sd2"
    if b.startswith("sdxl") or b in ("pony", "illustrious", "noobai"):
        return "sdxl"
    return None


#: AUTOMATIC1111's "sd version" values (its SdVersion enum) per family
SD_VERSION = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}

