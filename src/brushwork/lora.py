"""LoRA-family adapters merged into the loaded networks, and taken off again exactly.

Reads the files people share: kohya LoRA / LoCon (``lora_unet_*``, ``lora_te_*``,
``lora_te1_*``/``lora_te2_*``, with ``alpha``), diffusers/PEFT keys (``lora_A``/
``lora_B``), and LyCORIS LoHa (``hada_*``) and LoKr (``lokr_*``).  Each adapted
layer gets ΔW = update × (alpha / rank) × multiplier added to its weight; the
original weight is backed up once, so :meth:`LoraStack.restore` puts back the
exact original bits.  Module names are matched in both kohya spellings (diffusers
names, and the original-layout names some SDXL LoRAs use).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .models import convert
from .models.detect import UNET, ModelSpec
from .models.errors import ModelFileError
from .models.files import open_tensor_file
from .paths import files_by_stem

log = logging.getLogger(__name__)

PARTS = (
    "lora_down.weight", "lora_up.weight", "lora_mid.weight", "lora_A.weight", "lora_B.weight",
    "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
    "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
    "alpha", "scale", "dora_scale",
)


class LoraError(ModelFileError):
    """A LoRA file that cannot be applied; the message says why."""


def group_modules(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{module key: {part: tensor}} from a LoRA state dict."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        for part in PARTS:
            if key.endswith("." + part):
                groups.setdefault(key[: -len(part) - 1], {})[part] = t
                break
    return groups


def _tucker(core: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Rebuild a conv kernel from a Tucker core (r, r, kh, kw) and its two factors."""
    return torch.einsum("ijkl,pi,jr->prkl", core, left, right)


def delta_weight(group: dict[str, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    """ΔW of one adapted layer (before the user's multiplier), in float32."""
    g = {k: v.float() for k, v in group.items()}
    if "lora_down.weight" in g or "lora_A.weight" in g:
        down = g.get("lora_down.weight", g.get("lora_A.weight"))
        up = g.get("lora_up.weight", g.get("lora_B.weight"))
        rank = down.shape[0]
        if "lora_mid.weight" in g:
            delta = _tucker(g["lora_mid.weight"], up.flatten(1), down.flatten(1))
        else:
            delta = up.flatten(1) @ down.flatten(1)
    elif "hada_w1_a" in g:
        rank = g["hada_w1_b"].shape[0]
        if "hada_t1" in g:
            w1 = _tucker(g["hada_t1"], g["hada_w1_a"], g["hada_w1_b"])
            w2 = _tucker(g["hada_t2"], g["hada_w2_a"], g["hada_w2_b"])
        else:
            w1 = g["hada_w1_a"] @ g["hada_w1_b"]
            w2 = g["hada_w2_a"] @ g["hada_w2_b"]
        delta = w1 * w2
    elif "lokr_w1" in g or "lokr_w1_a" in g:
        w1 = g["lokr_w1"] if "lokr_w1" in g else g["lokr_w1_a"] @ g["lokr_w1_b"]
        if "lokr_w2" in g:
            w2 = g["lokr_w2"]
        elif "lokr_t2" in g:
            w2 = _tucker(g["lokr_t2"], g["lokr_w2_a"], g["lokr_w2_b"])
        else:
            w2 = g["lokr_w2_a"] @ g["lokr_w2_b"]
        rank = g["lokr_w2_b"].shape[0] if "lokr_w2_b" in g else g["lokr_w1_b"].shape[0] if "lokr_w1_b" in g else None
        while w1.ndim < w2.ndim:
            w1 = w1[..., None]
        delta = torch.kron(w1, w2)
    else:
        raise LoraError(f"unknown adapter kind with parts {sorted(group)}")
    if "scale" in g:
        factor = float(g["scale"])
    elif "alpha" in g and rank:
        factor = float(g["alpha"]) / rank
    else:
        factor = 1.0
    if delta.numel() != torch.Size(shape).numel():
        raise LoraError(f"an update of shape {tuple(delta.shape)} does not fit a layer of shape {tuple(shape)}")
    return delta.reshape(shape) * factor


def module_table(spec: ModelSpec, unet: torch.nn.Module, encoders: list[torch.nn.Module]) -> dict[str, tuple[torch.nn.Module, str]]:
    """Every name a LoRA may use for a layer -> (layer, "unet" | "te")."""
    table: dict[str, tuple[torch.nn.Module, str]] = {}
    for name, mod in unet.named_modules():
        if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
            table["lora_unet_" + name.replace(".", "_")] = (mod, "unet")
            table["unet." + name] = (mod, "unet")
            ldm = convert.unet_source(name + ".weight", spec.unet).key.removeprefix(UNET).removesuffix(".weight")
            table["lora_unet_" + ldm.replace(".", "_")] = (mod, "unet")
    several = len(encoders) > 1
    for i, enc in enumerate(encoders):
        kohya = f"lora_te{i + 1}_" if several else "lora_te_"
        peft = "text_encoder." if i == 0 else f"text_encoder_{i + 1}."
        for name, mod in enc.named_modules():
            if isinstance(mod, torch.nn.Linear):
                core = name if name.startswith("text_model.") else "text_model." + name
                table[kohya + core.replace(".", "_")] = (mod, "te")
                table[peft + core] = (mod, "te")
    return table


def lora_family(metadata: dict[str, str]) -> str | None:
    """The base family kohya's metadata names, if any."""
    base = metadata.get("ss_base_model_version", "")
    if base.startswith("sdxl"):
        return "sdxl"
    if metadata.get("ss_v2") == "True" or base.startswith("sd_v2"):
        return "sd2"
    if base.startswith("sd_v1") or metadata.get("ss_v2") == "False":
        return "sd1"
    return None


LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")
#: LoRAs that ship with the package (the demo balloon, for the demo model); a user's
#: file of the same name wins
PACKAGED_LORAS = Path(__file__).resolve().parent / "assets" / "demo" / "loras"


def lora_files(home) -> dict[str, Path]:
    """LoRA files in the data home by lower-case file stem (first folder wins)."""
    return files_by_stem([*home.lora_dirs, PACKAGED_LORAS], LORA_SUFFIXES, fold_case=True)


def trigger_words(metadata: dict[str, str], limit: int = 5) -> list[str]:
    """The most frequent caption tags kohya recorded (``ss_tag_frequency``), or the
    modelspec trigger phrase."""
    import json

    phrase = metadata.get("modelspec.trigger_phrase")
    if phrase:
        return [phrase]
    try:
        freq = json.loads(metadata.get("ss_tag_frequency", "{}"))
    except ValueError:
        return []
    counts: dict[str, int] = {}
    for tags in freq.values() if isinstance(freq, dict) else []:
        if isinstance(tags, dict):
            for tag, n in tags.items():
                counts[tag.strip()] = counts.get(tag.strip(), 0) + int(n)
    return [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]]


@dataclass(frozen=True)
class LoraSummary:
    name: str
    path: Path
    family: str
    addnet_hash: str
    triggers: list[str]


def summarize_loras(home) -> list[LoraSummary]:
    from .catalog import hash_cache
    from .hashing import SafetensorsHeaderError, read_safetensors_header

    cache = hash_cache(home)
    out = []
    labels = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
    for _, path in sorted(lora_files(home).items()):
        metadata: dict[str, str] = {}
        if path.suffix.lower() == ".safetensors":
            try:
                metadata = {str(k): str(v) for k, v in (read_safetensors_header(path).get("__metadata__") or {}).items()}
            except SafetensorsHeaderError as exc:
                out.append(LoraSummary(path.stem, path, f"unreadable: {exc}"[:60], "-", []))
                continue
        fam = lora_family(metadata)
        out.append(LoraSummary(path.stem, path, labels.get(fam or "", "unknown"), cache.get_addnet_hash(path)[:12], trigger_words(metadata)))
    return out


@dataclass
class LoraStack:
    """The LoRAs currently merged into a model's weights."""

    backups: dict[int, tuple[torch.nn.Parameter, torch.Tensor]] = field(default_factory=dict)
    applied: list[tuple[str, float, float]] = field(default_factory=list)  # (path, te, unet) in order

    def restore(self) -> None:
        """Put back the original weights, bit for bit."""
        with torch.no_grad():
            for param, original in self.backups.values():
                param.copy_(original)
        self.backups.clear()
        self.applied.clear()

    def apply(self, spec: ModelSpec, unet, encoders, path: Path, te: float = 1.0, unet_mult: float = 1.0) -> int:
        """Merge one LoRA file; returns how many layers it changed."""
        with open_tensor_file(path) as tf:
            tensors = {k: tf.get(k) for k in tf.tensors}
            metadata = dict(tf.metadata)
        fam = lora_family(metadata)
        if fam is not None and fam != spec.family:
            names = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
            raise LoraError(f"{path.name} was trained for {names[fam]}, but the loaded checkpoint is {names[spec.family]}; use it with a {names[fam]} checkpoint.")
        table = module_table(spec, unet, encoders)
        groups = group_modules(tensors)
        if not groups:
            raise LoraError(f"{path.name} contains no LoRA, LoHa or LoKr tensors; it is not a LoRA file.")
        matched = [k for k in groups if k in table]
        if not matched:
            raise LoraError(f"none of the {len(groups)} layers in {path.name} exist in this checkpoint (e.g. {next(iter(groups))!r}); it is probably for another model family.")
        changed = 0
        with torch.no_grad():
            for key in matched:
                mod, part = table[key]
                mult = te if part == "te" else unet_mult
                param = mod.weight
                try:
                    delta = delta_weight(groups[key], tuple(param.shape))
                except LoraError as exc:
                    raise LoraError(f"{path.name}, layer {key}: {exc}; the LoRA is for another model or damaged.") from None
                if id(param) not in self.backups:
                    self.backups[id(param)] = (param, param.detach().clone())
                param.add_((delta * mult).to(param.dtype))
                changed += 1
        skipped = len(groups) - len(matched)
        if skipped:
            log.warning("%s: %d of %d layers did not match this checkpoint and were skipped", path.name, skipped, len(groups))
        self.applied.append((str(path), te, unet_mult))
        return changed
