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

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from .models import convert
from .models.detect import FAMILY_LABELS, UNET, ModelSpec
from .models.errors import ModelFileError
from .models.files import damage_reported, open_tensor_file, read_safetensors_header
from .models.gguf_file import is_quantized
from .models.load import all_finite
from .paths import files_by_stem

log = logging.getLogger(__name__)

PARTS = (
    "lora_down.weight", "lora_up.weight", "lora_mid.weight", "lora_A.weight", "lora_B.weight",
    "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
    "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
    "alpha", "scale", "dora_scale",
    "down.weight", "up.weight",  # XLabs' Flux LoRAs (``double_blocks.N.processor.qkv_lora1.down.weight``)
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


def _part(g: dict[str, torch.Tensor], *names: str) -> torch.Tensor:
    """The first of ``names`` the group has; a missing part is a damaged file."""
    for name in names:
        if name in g:
            return g[name]
    raise LoraError(f"the part {' / '.join(names)} is missing")


def _update(g: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int | None]:
    """(raw update, rank) of one adapted layer, before alpha and the multiplier."""
    if "lora_down.weight" in g or "lora_A.weight" in g or "down.weight" in g:
        down = _part(g, "lora_down.weight", "lora_A.weight", "down.weight")
        up = _part(g, "lora_up.weight", "lora_B.weight", "up.weight")
        if "lora_mid.weight" in g:
            return _tucker(g["lora_mid.weight"], up.flatten(1), down.flatten(1)), down.shape[0]
        return up.flatten(1) @ down.flatten(1), down.shape[0]
    if "hada_w1_a" in g:
        parts = [_part(g, n) for n in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")]
        if "hada_t1" in g:
            w1 = _tucker(g["hada_t1"], parts[0], parts[1])
            w2 = _tucker(_part(g, "hada_t2"), parts[2], parts[3])
        else:
            w1, w2 = parts[0] @ parts[1], parts[2] @ parts[3]
        return w1 * w2, parts[1].shape[0]
    if "lokr_w1" in g or "lokr_w1_a" in g:
        w1 = g["lokr_w1"] if "lokr_w1" in g else _part(g, "lokr_w1_a") @ _part(g, "lokr_w1_b")
        if "lokr_w2" in g:
            w2 = g["lokr_w2"]
        elif "lokr_t2" in g:
            w2 = _tucker(g["lokr_t2"], _part(g, "lokr_w2_a"), _part(g, "lokr_w2_b"))
        else:
            w2 = _part(g, "lokr_w2_a") @ _part(g, "lokr_w2_b")
        rank = g["lokr_w2_b"].shape[0] if "lokr_w2_b" in g else g["lokr_w1_b"].shape[0] if "lokr_w1_b" in g else None
        while w1.ndim < w2.ndim:
            w1 = w1[..., None]
        return torch.kron(w1, w2), rank
    raise LoraError(f"unknown adapter kind with parts {sorted(g)}")


def _fit(delta: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if delta.numel() != torch.Size(shape).numel():
        raise LoraError(f"an update of shape {tuple(delta.shape)} does not fit a layer of shape {tuple(shape)}")
    return delta.reshape(shape)


def _factor(g: dict[str, torch.Tensor], rank: int | None) -> float:
    if "scale" in g:
        return float(g["scale"])
    if "alpha" in g and rank:
        return float(g["alpha"]) / rank
    return 1.0


def delta_weight(group: dict[str, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    """ΔW of one adapted layer (before the user's multiplier), in float32."""
    g = {k: v.float() for k, v in group.items()}
    delta, rank = _update(g)
    return _fit(delta, shape) * _factor(g, rank)


def check_group(group: dict[str, torch.Tensor], shape: tuple[int, ...]) -> None:
    """Raise :class:`LoraError` unless ``group`` gives a finite update for a layer of
    ``shape``.  The parts are checked for NaN/inf and scalar ``alpha``/``scale``; the
    shapes are worked out on the ``meta`` device, so no update is computed."""
    for name, t in group.items():
        if t.is_floating_point() and not bool(all_finite(t)):
            raise LoraError(f"{name} contains NaN or infinite values")
    for name in ("alpha", "scale"):
        if name in group and group[name].numel() != 1:
            raise LoraError(f"{name} should be a single number but has shape {tuple(group[name].shape)}")
    shapes = {k: tuple(v.shape) for k, v in group.items()}
    try:
        delta, _ = _update({k: v.to("meta", torch.float32) for k, v in group.items()})
    except (RuntimeError, IndexError) as exc:
        raise LoraError(f"its parts {shapes} do not combine into an update ({str(exc).splitlines()[0][:100]})") from None
    _fit(delta, shape)


@dataclass(frozen=True)
class Target:
    """Where (part of) one LoRA layer's update goes: a layer of the loaded network, whose
    part of the model it is ("unet" or "te"), and for a layer the file fuses (Flux's
    q/k/v) the rows (start, count) of the update that belong to this layer."""

    module: torch.nn.Module
    part: str
    rows: Optional[tuple[int, int]] = None


def targets_for(spec, unet: torch.nn.Module, encoders: list[torch.nn.Module]) -> dict[str, list[Target]]:
    """Every name a LoRA may use for a layer -> where its update goes."""
    if getattr(spec, "family", None) == "flux":
        from .models.flux import flux_lora_names

        layers = dict(unet.named_modules())
        return {name: [Target(layers[module], "unet", rows) for module, rows in parts] for name, parts in flux_lora_names(spec).items()}
    return {name: [Target(mod, part)] for name, (mod, part) in module_table(spec, unet, encoders).items()}


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
    base = str(metadata.get("ss_base_model_version", ""))
    v2 = str(metadata.get("ss_v2", ""))
    if base.startswith("sdxl"):
        return "sdxl"
    if base.startswith("flux"):
        return "flux"
    if v2 == "True" or base.startswith("sd_v2"):
        return "sd2"
    if base.startswith("sd_v1") or v2 == "False":
        return "sd1"
    return None


LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")
#: LoRAs that ship with the package (the demo balloon, for the demo model); a user's
#: file of the same name wins
PACKAGED_LORAS = Path(__file__).resolve().parent / "assets" / "demo" / "loras"


def lora_files(home) -> dict[str, Path]:
    """LoRA files in the data home by lower-case file stem (first folder wins)."""
    return files_by_stem([*home.lora_dirs, PACKAGED_LORAS], LORA_SUFFIXES, fold_case=True)


def _json_object(text) -> dict:
    """``text`` parsed as a JSON object; {} for anything else (bad, too deep, not an object)."""
    if not isinstance(text, str):
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _count(n) -> int | None:
    """A tag count from kohya's metadata, if it is a finite number."""
    if isinstance(n, bool) or not isinstance(n, (int, float)) or not math.isfinite(n):
        return None
    return int(n)


def trigger_words(metadata: dict[str, str], limit: int = 5) -> list[str]:
    """The most frequent caption tags kohya recorded (``ss_tag_frequency``), or the
    modelspec trigger phrase.  Malformed metadata gives no words, never an error."""
    phrase = metadata.get("modelspec.trigger_phrase")
    if isinstance(phrase, str) and phrase.strip():
        return [phrase.strip()]
    counts: dict[str, int] = {}
    for tags in _json_object(metadata.get("ss_tag_frequency")).values():
        for tag, n in (tags.items() if isinstance(tags, dict) else []):
            if _count(n) is not None:
                counts[tag.strip()] = counts.get(tag.strip(), 0) + _count(n)
    return [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]]


def lora_metadata(path: Path) -> dict[str, str]:
    """A LoRA file's safetensors metadata ({} for other formats); raises
    :class:`LoraError` with the reason when the file is damaged."""
    if path.suffix.lower() != ".safetensors":
        return {}
    try:
        return read_safetensors_header(path)[1]
    except ModelFileError as exc:
        raise LoraError(str(exc)) from None
    except OSError as exc:
        raise LoraError(f"{path.name} could not be read ({exc.strerror or exc}).") from None


def listed_metadata(path: Path) -> dict[str, str]:
    """:func:`lora_metadata` for listings: {} for a damaged file, never an error."""
    try:
        return lora_metadata(path)
    except LoraError as exc:
        log.info("LoRA listing: %s", exc)
        return {}


def read_lora(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a LoRA file; any damage is a :class:`LoraError`."""
    try:
        with damage_reported(path, "LoRA file", LoraError):
            with open_tensor_file(path) as tf:
                return {k: tf.get(k) for k in tf.tensors}, dict(tf.metadata)
    except LoraError:
        raise
    except ModelFileError as exc:
        raise LoraError(str(exc)) from None


@dataclass(frozen=True)
class LoraSummary:
    name: str
    path: Path
    family: str
    addnet_hash: str
    triggers: list[str]
    base_model: Optional[str] = None  # from the sidecar files (civitai's baseModel, or A1111's "sd version")
    weight: Optional[float] = None  # the user's "preferred weight" (A1111's NAME.json)
    preview: Optional[Path] = None  # NAME.preview.png (or NAME.png ...) beside the file
    #: the words the sidecar says wake it up (civitai's trainedWords, A1111's activation
    #: text): inserted with the tag; the file's own frequent tags are only shown
    activation: list[str] = field(default_factory=list)


def _merged_triggers(sidecar: list[str], from_file: list[str]) -> list[str]:
    """The sidecar's trigger words first (civitai's trainedWords, or the user's
    activation text), then the file's own tags; each once (case-insensitive)."""
    out: list[str] = []
    seen: set[str] = set()
    for word in [*sidecar, *from_file]:
        if word.lower() not in seen:
            seen.add(word.lower())
            out.append(word)
    return out


def summarize_loras(home) -> list[LoraSummary]:
    from .catalog import hash_cache
    from .fetch.sidecars import model_info
    from .hashing import SafetensorsHeaderError

    cache = hash_cache(home)
    out = []
    for _, path in sorted(lora_files(home).items()):
        info = model_info(path)
        extra = dict(base_model=info.base_model, weight=info.weight, preview=info.preview, activation=list(info.trigger_words))
        try:
            metadata = lora_metadata(path)
            addnet = cache.get_addnet_hash(path)[:12]
        except (LoraError, SafetensorsHeaderError, OSError) as exc:
            why = str(exc).removeprefix(path.name).lstrip(" :")
            out.append(LoraSummary(path.stem, path, f"unreadable: {why}"[:60], "-", info.trigger_words, **extra))
            continue
        fam = lora_family(metadata)
        triggers = _merged_triggers(info.trigger_words, trigger_words(metadata))
        out.append(LoraSummary(path.stem, path, FAMILY_LABELS.get(fam or "", "unknown"), addnet, triggers, **extra))
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
        """Merge one LoRA file; returns how many layers it changed.

        All or nothing: the file is read and every layer's update checked before any
        weight changes, so a :class:`LoraError` (damaged file, wrong model) leaves the
        weights bit for bit as they were.  Should merging still fail (an update that
        overflows the weights' dtype, running out of memory), the LoRAs merged before
        this one are re-merged from the original weights and the error is raised."""
        layers = self._plan(spec, unet, encoders, path, te, unet_mult)
        merged = 0
        try:
            with torch.no_grad():
                for key, group, shape, targets in layers:
                    delta = delta_weight(group, shape)  # once per file layer, however many layers it feeds
                    for param, rows, mult in targets:
                        self._merge(path, key, param, delta if rows is None else delta[rows[0]:rows[0] + rows[1]], mult)
                        merged += 1
        except BaseException:
            if merged:
                self._replay(spec, unet, encoders)
            raise
        self.applied.append((str(path), te, unet_mult))
        return sum(len(targets) for *_, targets in layers)

    def _plan(self, spec: ModelSpec, unet, encoders, path: Path, te: float, unet_mult: float) -> list[tuple[str, dict, tuple[int, ...], list[tuple[torch.nn.Parameter, Optional[tuple[int, int]], float]]]]:
        """(key, parts, the update's shape, [(weight, its rows of the update, multiplier)])
        for every layer the file changes, all checked."""
        tensors, metadata = read_lora(path)
        fam = lora_family(metadata)
        if fam is not None and fam != spec.family:
            raise LoraError(f"{path.name} was trained for {FAMILY_LABELS[fam]}, but the loaded checkpoint is {FAMILY_LABELS[spec.family]}; use it with a {FAMILY_LABELS[fam]} checkpoint.")
        table = targets_for(spec, unet, encoders)
        groups = group_modules(tensors)
        if not groups:
            raise LoraError(f"{path.name} contains no LoRA, LoHa or LoKr tensors; it is not a LoRA file.")
        matched = [k for k in groups if k in table]
        if not matched:
            raise LoraError(f"none of the {len(groups)} layers in {path.name} exist in this checkpoint (e.g. {next(iter(groups))!r}); it is probably for another model family.")
        layers = []
        for key in matched:
            targets = table[key]
            weight = targets[0].module.weight
            shape = tuple(weight.shape) if targets[0].rows is None else (sum(t.rows[1] for t in targets), *weight.shape[1:])
            if is_quantized(targets[0].module):
                raise LoraError(f"{path.name}: the loaded model keeps {key} quantized (a GGUF file), and a LoRA cannot be merged into quantized weights yet; use a safetensors (bf16/fp16/fp8) model file with LoRAs.")
            try:
                check_group(groups[key], shape)
            except LoraError as exc:
                raise LoraError(f"{path.name}, layer {key}: {exc}; the LoRA is for another model or damaged.") from None
            layers.append((key, groups[key], shape, [(t.module.weight, t.rows, te if t.part == "te" else unet_mult) for t in targets]))
        skipped = len(groups) - len(matched)
        if skipped:
            log.warning("%s: %d of %d layers did not match this checkpoint and were skipped", path.name, skipped, len(groups))
        return layers

    def _merge(self, path: Path, key: str, param: torch.nn.Parameter, delta: torch.Tensor, mult: float) -> None:
        """Add one checked layer's update (before the multiplier), refusing one that would
        make the weight non-finite."""
        merged = param + (delta * mult).to(param.dtype)
        if not bool(all_finite(merged)):
            raise LoraError(f"{path.name}, layer {key}: merging it makes the weights NaN or infinite in {param.dtype} (multiplier {mult}); the LoRA is damaged or the multiplier too large.")
        if id(param) not in self.backups:
            self.backups[id(param)] = (param, param.detach().clone())
        param.copy_(merged)

    def _replay(self, spec: ModelSpec, unet, encoders) -> None:
        """Back to the original weights plus the LoRAs applied so far (after a failed merge)."""
        earlier = list(self.applied)
        self.restore()
        for path, te, unet_mult in earlier:
            self.apply(spec, unet, encoders, Path(path), te, unet_mult)
