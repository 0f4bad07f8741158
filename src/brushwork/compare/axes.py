"""The axes of a comparison grid (AUTOMATIC1111's "X/Y/Z plot"), their values, and
how one value changes a :class:`~brushwork.request.GenerationRequest`.

Pure: no model, no pictures.  The engine's grid job uses it like this::

    x, y, z = parse_axis("Steps: 10-30 (+10)"), parse_axis("CFG Scale: 4,7"), None
    nx, ny, nz = grid_shape(x, y, z)            # refuses more than MAX_CELLS cells
    if not no_fixed_seeds:                      # A1111's "Keep -1 for seeds" unticked
        if x.label in SEED_AXES: x = replace(x, values=seeds_for_grid(x.values, rng))
        request = replace(request, seed=resolve_seed(request.seed, rng))
    for each cell: req = apply_value(x.label, xv, request, x.values[0]), then y, then z

A dry run of :func:`apply_value` over every value before the first picture catches a
Prompt S/R search string that is in neither prompt, as A1111 only finds out mid-grid.

Value syntax (shared/reference/a1111-compat.md h.3), for :func:`parse_values`:

* Values are comma separated, CSV style: ``"a, b", c`` is two values; inside quotes
  ``""`` is a literal quote.  Whitespace around values is trimmed and empty values are
  dropped, except on Prompt S/R, where an empty value after the first is kept, as in
  A1111: it deletes the search string (``"masterpiece, "`` compares with and without).
* Number axes (Seed, Var. seed, Steps, Clip skip; Var. strength, CFG Scale, Denoising)
  also take ranges, per value:

  - ``1-5``: both ends included, step 1 (``5-1`` counts down: 5, 4, 3, 2, 1);
  - ``1-10 (+2)``: a step; the end is included only when a step lands on it
    (``1-10 (+4)`` is 1, 5, 9) and a value is never past the end.  ``10-1 (-3)`` is
    10, 7, 4, 1.  A step of 0, or one that points away from the end, is an error;
  - ``1-10 [5]``: 5 evenly spaced values from start to end, both included.  On whole
    number axes each is cut towards zero as A1111 does (``1-10 [5]`` is 1, 3, 5, 7, 10),
    so a count larger than the span repeats values (``1-2 [3]`` is 1, 1, 2);
  - float axes take the same forms with decimals (``0.5-2.5 (+0.5)``, ``1-2 [3]``);
    values are rounded to 10 decimals so steps of 0.1 give 0.3, not 0.30000000000000004.

  A leading minus is a sign, not a range: ``-1`` is one value, ``-5-5`` is -5 .. 5.
  Where A1111 differs, knowingly: its ``10-1 (-3)`` drops the end (10, 7, 4), its
  ``5-1`` is empty, and its float steps may overshoot the end (``1-2 (+0.3)`` gives 2.2).
* Prompt order: the values are phrases of the prompt; the axis's values are all their
  orders (itertools.permutations order), each a tuple.
* Size: ``WIDTHxHEIGHT`` (``512x768``), sides multiples of 8.
* Sampler and Schedule type: any spelling the sampler registry knows; stored as the
  canonical label (a legacy name that carries a schedule stays combined: "DPM++ 2M Karras").
"""
from __future__ import annotations

import difflib
import itertools
import math
import random
import re
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any, Optional

from ..request import MAX_CLIP_SKIP, MAX_SEED, MAX_SIDE, MAX_STEPS, MIN_SIDE, resolve_seed
from ..sampling.registry import UnknownSamplerError, resolve_sampler, resolve_schedule
from ..sampling.schedules import SCHEDULE_LABELS

#: at most this many values on one axis, and cells in one grid (checked before any work)
MAX_VALUES = 64
MAX_CELLS = 1024


class AxisError(ValueError):
    """A bad axis or axis value; the message names the axis, the value and the fix."""


@dataclass(frozen=True)
class AxisType:
    """One kind of axis, as in A1111's list."""

    label: str  # A1111's label, also written to the infotext's "X Type"
    kind: type  # int, float or str: the type of each value
    fields: tuple[str, ...] = ()  # the GenerationRequest fields it sets
    aliases: tuple[str, ...] = ()  # other spellings, case-insensitive
    model: bool = False  # changes the checkpoint: the caller loads it (not a request field)
    vae: bool = False  # changes the VAE: the caller swaps it (not a request field)
    permutes: bool = False  # Prompt order: the values are the orders of the listed phrases
    choices: bool = False  # a dropdown in A1111's UI: the API sends its values as a list
    cost: float = 0.0  # A1111's reload cost: the costliest axis becomes the outer loop (h.4)
    lo: Optional[float] = None  # number range, both ends allowed
    hi: Optional[float] = None
    hint: str = ""  # a typical value list, for messages


#: The axes Brushwork supports, in A1111's list order.
AXES: dict[str, AxisType] = {
    a.label: a
    for a in [
        AxisType("Nothing", str, aliases=("none",)),
        AxisType("Seed", int, ("seed",), ("seeds",), lo=-1, hi=MAX_SEED, hint="1,2,3 or -1,-1"),
        AxisType("Var. seed", int, ("subseed",), ("var seed", "variation seed", "subseed"), lo=-1, hi=MAX_SEED, hint="1,2,3 or -1,-1"),
        AxisType("Var. strength", float, ("subseed_strength",), ("var strength", "variation strength", "subseed strength"), lo=0, hi=1, hint="0,0.25,0.5 or 0-1 [5]"),
        AxisType("Steps", int, ("steps",), ("step",), lo=1, hi=MAX_STEPS, hint="5,10,20 or 5-25 (+5)"),
        AxisType("Hires steps", int, ("hires_steps",), ("hires step", "hr steps", "hr second pass steps"), lo=0, hi=MAX_STEPS, hint="0,10,20 (0: the same as steps)"),
        AxisType("CFG Scale", float, ("cfg_scale",), ("cfg", "cfg scale", "guidance", "guidance scale"), lo=0, hi=30, hint="4,7,10 or 3-12 [4]"),
        AxisType("Prompt S/R", str, ("prompt", "negative_prompt"), ("s/r", "sr", "prompt sr", "search replace", "search and replace")),
        AxisType("Prompt order", str, ("prompt",), ("order",), permutes=True),
        AxisType("Sampler", str, ("sampler", "schedule"), ("samplers", "sampler name"), choices=True),
        AxisType("Hires sampler", str, ("hires_sampler", "hires_schedule"), ("hr sampler", "hires samplers"), choices=True),
        AxisType("Checkpoint name", str, (), ("checkpoint", "checkpoints", "model", "ckpt"), model=True, choices=True, cost=1.0),
        AxisType("Schedule type", str, ("schedule",), ("schedule", "scheduler", "schedule type"), choices=True),
        AxisType("Clip skip", int, ("clip_skip",), ("clip skip", "clipskip"), lo=1, hi=MAX_CLIP_SKIP, hint="1,2 or 1-4"),
        AxisType("Denoising", float, ("denoising_strength",), ("denoise", "denoising strength", "strength"), lo=0, hi=1, hint="0.3,0.5,0.7 or 0.2-0.8 (+0.2)"),
        AxisType("Hires upscaler", str, ("hires_upscaler",), ("hr upscaler", "hires upscalers", "upscaler"), choices=True),
        AxisType("VAE", str, ("vae",), ("vae",), vae=True, choices=True, cost=0.7),
        AxisType("Size", str, ("width", "height"), ("size", "resolution", "width x height"), hint="512x512,512x768"),
    ]
}

#: A1111's axis lists after its filter for each mode (h.2, without dev's "Skip Early CFG"):
#: an API request's ``*_type`` is an index into one of these.
TXT2IMG_AXES: tuple[str, ...] = (
    "Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale",
    "Prompt S/R", "Prompt order", "Sampler", "Hires sampler", "Checkpoint name",
    "Negative Guidance minimum sigma", "Sigma Churn", "Sigma min", "Sigma max", "Sigma noise",
    "Schedule type", "Schedule min sigma", "Schedule max sigma", "Schedule rho",
    "Beta schedule alpha", "Beta schedule beta", "Eta", "Clip skip", "Denoising",
    "Initial noise multiplier", "Extra noise", "Hires upscaler", "VAE", "Styles", "UniPC Order",
    "Face restore", "Token merging ratio", "Token merging ratio high-res",
    "Always discard next-to-last sigma", "SGM noise multiplier", "Refiner checkpoint",
    "Refiner switch at", "RNG source", "FP8 mode", "Size",
)
IMG2IMG_AXES: tuple[str, ...] = (
    "Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "CFG Scale", "Image CFG Scale",
    "Prompt S/R", "Prompt order", "Sampler", "Checkpoint name",
    "Negative Guidance minimum sigma", "Sigma Churn", "Sigma min", "Sigma max", "Sigma noise",
    "Schedule type", "Schedule min sigma", "Schedule max sigma", "Schedule rho",
    "Beta schedule alpha", "Beta schedule beta", "Eta", "Clip skip", "Denoising",
    "Initial noise multiplier", "Extra noise", "Cond. Image Mask Weight", "VAE", "Styles",
    "UniPC Order", "Face restore", "Token merging ratio", "Token merging ratio high-res",
    "Always discard next-to-last sigma", "SGM noise multiplier", "Refiner checkpoint",
    "Refiner switch at", "RNG source", "FP8 mode", "Size",
)
#: dev builds of A1111 append this to both lists
_DEV_AXES = ("Skip Early CFG",)
SEED_AXES = ("Seed", "Var. seed")


@dataclass(frozen=True)
class Axis:
    """One axis of a grid: its canonical label, its typed values, and the values text as
    given (for the infotext's "X Values")."""

    label: str
    values: list
    raw: str = ""

    @property
    def type(self) -> AxisType:
        return AXES[self.label]


# ---------------------------------------------------------------- names


def _norm(name: str) -> str:
    return " ".join(name.strip().lower().replace("_", " ").split())


def _spellings() -> dict[str, str]:
    table: dict[str, str] = {}
    for a in AXES.values():
        for s in (a.label, *a.aliases):
            table[_norm(s)] = a.label
    return table


def _unsupported(name: str) -> AxisError:
    return AxisError(
        f"X/Y/Z plot axis {name!r} is not supported by Brushwork. "
        f"Supported axes: {', '.join(AXES)}."
    )


def axis_type(name: str) -> AxisType:
    """The axis type for a label or alias (case-insensitive)."""
    label = _spellings().get(_norm(name))
    if label is not None:
        return AXES[label]
    known_a1111 = {_norm(n): n for n in (*TXT2IMG_AXES, *IMG2IMG_AXES, *_DEV_AXES)}
    if _norm(name) in known_a1111:
        raise _unsupported(known_a1111[_norm(name)])
    spellings = _spellings()
    close = difflib.get_close_matches(_norm(name), list(spellings), n=1, cutoff=0.5)
    hint = f" Did you mean {spellings[close[0]]!r}?" if close else ""
    raise AxisError(f"Unknown X/Y/Z plot axis {name.strip()!r}.{hint} Valid axes: {', '.join(AXES)}.")


# ---------------------------------------------------------------- value syntax


def _split_csv(label: str, text: str) -> list[str]:
    """Comma-separated items, trimmed; double quotes protect commas ("" is a quote)."""
    items: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i < n and text[i] == '"':
            i += 1
            buf = []
            while True:
                if i >= n:
                    raise AxisError(f"{label}: a quote in {text!r} is never closed; put a \" after the value.")
                if text[i] == '"':
                    if i + 1 < n and text[i + 1] == '"':
                        buf.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                buf.append(text[i])
                i += 1
            rest_end = text.find(",", i)
            rest = text[i:] if rest_end < 0 else text[i:rest_end]
            items.append(("".join(buf) + rest).strip())
            i = n if rest_end < 0 else rest_end
        else:
            end = text.find(",", i)
            items.append((text[i:] if end < 0 else text[i:end]).strip())
            i = n if end < 0 else end
        if i >= n:
            return items
        i += 1  # the comma


_NUM = r"[+-]?\s*(?:\d+(?:\.\d*)?|\.\d+)"
_RANGE = re.compile(
    rf"\s*({_NUM})\s*-\s*({_NUM})\s*(?:\(\s*({_NUM})\s*\)|\[\s*({_NUM})\s*\])?\s*"
)
_SINGLE = re.compile(rf"\s*{_NUM}\s*")


def _num(s: str) -> float:
    return float(s.replace(" ", ""))


def _too_many(label: str, count: int, text: str) -> AxisError:
    return AxisError(
        f"{label}: {text!r} gives {count} values; an axis takes at most {MAX_VALUES}. "
        "Use a larger step or a count like [8]."
    )


def _expand_range(t: AxisType, item: str, m: re.Match) -> list:
    label, whole = t.label, t.kind is int
    a, b, step_s, count_s = m.groups()
    if whole and any(s is not None and "." in s for s in (a, b, step_s)):
        raise AxisError(f"{label}: {item!r} has a decimal point; {label} takes whole numbers, e.g. {t.hint}.")
    start, end = _num(a), _num(b)
    if count_s is not None:
        count = _num(count_s)
        if count != int(count) or count < 1:
            raise AxisError(f"{label}: the count in {item!r} must be a whole number of at least 1, e.g. [5].")
        count = int(count)
        if count > MAX_VALUES:
            raise _too_many(label, count, item)
        if count == 1:
            vals = [start]
        else:
            vals = [start + (end - start) * i / (count - 1) for i in range(count)]
            vals[-1] = end
        return [int(v) for v in vals] if whole else [round(v, 10) for v in vals]
    if step_s is None:
        step = 1.0 if end >= start else -1.0
    else:
        step = _num(step_s)
    if step == 0:
        raise AxisError(f"{label}: the step 0 in {item!r} never reaches the end; use e.g. (+1).")
    if (end - start) * step < 0:
        good = f"(-{abs(step):g})" if end < start else f"(+{abs(step):g})"
        raise AxisError(f"{label}: the step {step:+g} in {item!r} goes away from {end:g}; use {good}.")
    count = int(math.floor((end - start) / step + 1e-9)) + 1
    if count > MAX_VALUES:
        raise _too_many(label, count, item)
    if whole:
        return [int(start) + i * int(step) for i in range(count)]
    return [round(start + i * step, 10) for i in range(count)]


def _number(t: AxisType, item: str):
    if _SINGLE.fullmatch(item):
        v = _num(item)
        if t.kind is int:
            if v != int(v) or "." in item:
                raise AxisError(f"{t.label}: {item!r} is not a whole number; write e.g. {t.hint}.")
            return int(v)
        return v
    if t.kind is float:
        try:
            v = float(item)  # 1e-3 and friends
            if math.isfinite(v):
                return v
        except ValueError:
            pass
    if re.search(r"\d\s*-|[(\[]", item):
        raise AxisError(f"{t.label}: {item!r} is not a number range; write e.g. {t.hint}.")
    raise AxisError(f"{t.label}: {item!r} is not a number; write e.g. {t.hint}.")


def _check_number(t: AxisType, v, item: str) -> None:
    if t.label in SEED_AXES:
        if v != -1 and not 0 <= v <= MAX_SEED:
            raise AxisError(f"{t.label}: {v} is out of range; a seed is -1 (random) or 0 to {MAX_SEED}.")
        return
    if not t.lo <= v <= t.hi:
        raise AxisError(f"{t.label}: {v:g} (from {item!r}) is out of range; {t.label} goes from {t.lo:g} to {t.hi:g}, e.g. {t.hint}.")


def _size(item: str) -> str:
    m = re.fullmatch(r"\s*(\d+)\s*[xX×*]\s*(\d+)\s*", item)
    if not m:
        raise AxisError(f"Size: {item!r} is not a size; write WIDTHxHEIGHT, e.g. 512x512,512x768.")
    w, h = int(m.group(1)), int(m.group(2))
    for name, v in (("width", w), ("height", h)):
        if v % 8:
            lo, hi = v // 8 * 8, v // 8 * 8 + 8
            raise AxisError(f"Size: the {name} {v} in {item!r} is not a multiple of 8 (the VAE works on 8x8 blocks); try {lo} or {hi}.")
        if not MIN_SIDE <= v <= MAX_SIDE:
            raise AxisError(f"Size: the {name} {v} in {item!r} is out of range; sides go from {MIN_SIDE} to {MAX_SIDE} pixels.")
    return f"{w}x{h}"


def _sampler_label(item: str) -> str:
    try:
        info, sched = resolve_sampler(item)
    except UnknownSamplerError as e:
        raise AxisError(f"Sampler: {e}") from None
    return info.label if sched == "automatic" else f"{info.label} {SCHEDULE_LABELS[sched]}"


def _schedule_label(item: str) -> str:
    try:
        return SCHEDULE_LABELS[resolve_schedule(item)]
    except UnknownSamplerError as e:
        raise AxisError(f"Schedule type: {e}") from None


def _typed(t: AxisType, items: list[str], text: str) -> list:
    label = t.label
    if label == "Nothing":
        return [None]
    if label == "Prompt S/R":
        if not items or not items[0]:
            raise AxisError("Prompt S/R: the first value is the text to search for and may not be empty; write e.g. cat,dog,bird.")
        vals = list(items)  # empties after the first delete the search string
    else:
        vals = [s for s in items if s]
    if not vals:
        example = f"e.g. {t.hint}" if t.hint else "at least one value"
        raise AxisError(f"{label}: no values given; write {example}.")
    if t.kind in (int, float):
        out: list = []
        for item in vals:
            m = _RANGE.fullmatch(item)
            got = _expand_range(t, item, m) if m else [_number(t, item)]
            for v in got:
                _check_number(t, v, item)
            out += got
            if len(out) > MAX_VALUES:
                raise _too_many(label, len(out), text)
        return out
    if len(vals) > MAX_VALUES:
        raise _too_many(label, len(vals), text)
    if t.permutes:
        if math.factorial(len(vals)) > MAX_VALUES:
            raise AxisError(
                f"Prompt order: {len(vals)} phrases give {math.factorial(len(vals))} orders; "
                f"an axis takes at most {MAX_VALUES} values, so list at most 4 phrases."
            )
        return list(itertools.permutations(vals))
    if label == "Size":
        return [_size(s) for s in vals]
    if label in ("Sampler", "Hires sampler"):
        return [_sampler_label(s) for s in vals]
    if label == "Hires upscaler":
        from ..upscale.latent import latent_mode_name

        return [latent_mode_name(v) or v.strip() for v in vals]
    if label == "Schedule type":
        return [_schedule_label(s) for s in vals]
    return vals


def parse_values(axis_label: str, text: str) -> list:
    """The typed values of an axis from A1111's value syntax (see the module docstring)."""
    t = axis_type(axis_label)
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise AxisError(f"{t.label}: the values must be text like {t.hint or 'a,b,c'!r}; got {text!r}.")
    return _typed(t, _split_csv(t.label, text), text)


def parse_axis(text: str) -> Axis:
    """An axis from the CLI form ``"Label: values"`` ("Steps: 5,20,45", "CFG Scale: 1-12 [4]")."""
    label, colon, values = text.partition(":")
    if not colon:
        raise AxisError(f"Axis {text.strip()!r} has no ':'; write it as 'Label: values', e.g. 'Steps: 10,20,30'.")
    t = axis_type(label)
    values = values.strip()
    return Axis(t.label, parse_values(t.label, values), values)


# ---------------------------------------------------------------- cells


def _set(request, label: str, **changes):
    known = {f.name for f in fields(request)} if is_dataclass(request) else set()
    for name in changes:
        if name not in known:
            raise AxisError(f"{label}: this Brushwork build's requests have no {name!r} field, so the {label} axis cannot be used yet.")
    return replace(request, **changes)


def apply_value(label: str, value: Any, request, first_value: Any = None):
    """A copy of ``request`` with one axis value applied (the request is not changed).

    ``first_value`` is the axis's first value: Prompt S/R's search string.  Checkpoint
    name and Nothing change no request field: the caller loads the model
    (``AXES[label].model``); VAE sets the request's VAE (the engine swaps it in).  Denoising sets an img2img's strength, or the
    hires pass's; the Hires axes turn the hires fix on."""
    t = axis_type(label)
    label = t.label
    if label == "Denoising" and request.hires:
        return replace(request, hires_strength=value)
    if label in ("Hires steps", "Hires upscaler"):
        return replace(request, hires=True, **{t.fields[0]: value})
    if label == "Hires sampler":
        info, sched = resolve_sampler(value)
        return replace(request, hires=True, hires_sampler=info.label, hires_schedule=None if sched == "automatic" else SCHEDULE_LABELS[sched])
    if label == "VAE":
        return replace(request, vae=value)
    if label in ("Nothing", "Checkpoint name"):
        return replace(request)
    if label == "Prompt S/R":
        search = value if first_value is None else first_value
        if search not in request.prompt and search not in request.negative_prompt:
            raise AxisError(f"Prompt S/R: {search!r} is not in the prompt or the negative prompt; the first value is what gets replaced.")
        return replace(
            request,
            prompt=request.prompt.replace(search, value),
            negative_prompt=request.negative_prompt.replace(search, value),
        )
    if label == "Prompt order":
        prompt = request.prompt
        for phrase in value:
            if phrase not in prompt:
                raise AxisError(f"Prompt order: {phrase!r} is not in the prompt; list phrases that the prompt contains.")
        # The phrases' places in the prompt, earliest first, are the slots; the order
        # puts its first phrase in the first slot, and so on.
        slots = sorted(value, key=prompt.find)
        parts, rest = [], prompt
        for phrase in slots:
            at = rest.find(phrase)
            parts.append(rest[:at])
            rest = rest[at + len(phrase):]
        return replace(request, prompt="".join(p + v for p, v in zip(parts, value)) + rest)
    if label == "Sampler":
        info, sched = resolve_sampler(value)
        if sched == "automatic":
            return replace(request, sampler=info.label)
        return replace(request, sampler=info.label, schedule=SCHEDULE_LABELS[sched])
    if label == "Size":
        w, h = (int(s) for s in value.split("x"))
        return replace(request, width=w, height=h)
    return _set(request, label, **{t.fields[0]: value})


def seeds_for_grid(values: list, rng: random.Random) -> list:
    """A seed axis's values (Seed, Var. seed) with each ``-1`` replaced by a random seed,
    drawn once here so every cell of the grid shares it, as A1111 does unless "Keep -1
    for seeds" is ticked.  Each -1 gets its own draw; other values are kept.

    The caller calls this for seed axes only (``label in SEED_AXES``) and fixes the
    request's own -1 seed the same way (``request.resolve_seed(seed, rng)``).  To let
    each cell draw its own seed instead ("Keep -1 for seeds"), it skips both and leaves
    the -1 values in place: the engine draws one per request."""
    return [resolve_seed(-1, rng) if v == -1 else v for v in values]


def cell_seed(seed: int, ix: int, iy: int, iz: int, nx: int, ny: int, vary: tuple[bool, bool, bool] = (False, False, False)) -> int:
    """The seed of cell (ix, iy, iz) under A1111's "vary seeds" flags (X, Y, Z): each
    varied axis adds its index, counted over the varied axes before it."""
    vx, vy, vz = vary
    xdim = nx if vx else 1
    ydim = ny if vy else 1
    return seed + (ix if vx else 0) + (iy * xdim if vy else 0) + (iz * xdim * ydim if vz else 0)


def _count(axis: Optional[Axis]) -> int:
    return 1 if axis is None or axis.label == "Nothing" else len(axis.values)


def grid_shape(x: Optional[Axis], y: Optional[Axis] = None, z: Optional[Axis] = None) -> tuple[int, int, int]:
    """(columns, rows, sub-grids); None or Nothing counts 1.  More than MAX_CELLS is refused."""
    nx, ny, nz = _count(x), _count(y), _count(z)
    for a in (x, y, z):
        if a is not None and a.label != "Nothing" and not a.values:
            raise AxisError(f"{a.label}: no values given.")
    if nx * ny * nz > MAX_CELLS:
        raise AxisError(
            f"X/Y/Z plot: {nx} x {ny} x {nz} = {nx * ny * nz} pictures; a grid takes at most {MAX_CELLS}. "
            "Use fewer values on an axis."
        )
    return nx, ny, nz


def value_label(axis: Axis, value: Any) -> str:
    """A legend label (h.5): "<Axis label>: <value>", floats rounded to 8 decimals;
    Sampler and Prompt S/R show the bare value, Checkpoint name the file's basename,
    Prompt order the phrases joined with ", "."""
    label = axis.label
    if label == "Nothing":
        return ""
    if label == "Prompt order":
        return ", ".join(value)
    if label in ("Sampler", "Prompt S/R", "Hires sampler", "Hires upscaler"):
        return str(value)
    if label == "Checkpoint name":
        return re.split(r"[\\/]", str(value))[-1]
    if isinstance(value, float):
        value = round(value, 8)
    return f"{label}: {value}"


# ---------------------------------------------------------------- A1111 API and infotext

#: A1111's x/y/z plot flags after the three axes (h.1), with its defaults
SCRIPT_FLAGS: tuple[tuple[str, Any], ...] = (
    ("draw_legend", True),
    ("include_lone_images", False),
    ("include_sub_grids", False),
    ("no_fixed_seeds", False),
    ("vary_seeds_x", False),
    ("vary_seeds_y", False),
    ("vary_seeds_z", False),
    ("margin_size", 0),
    ("csv_mode", False),
    ("draw_grid", True),  # dev builds only
)


def _csv_join(items: list) -> str:
    out = []
    for s in map(str, items):
        out.append('"' + s.replace('"', '""') + '"' if any(c in s for c in ',"\n') else s)
    return ",".join(out)


def _api_axis(letter: str, type_arg, values_arg, dropdown_arg, names: tuple[str, ...], csv_mode: bool) -> Axis:
    where = f"X/Y/Z plot {letter} type"
    if isinstance(type_arg, str) and type_arg.strip().lstrip("-").isdigit():
        type_arg = int(type_arg)
    if isinstance(type_arg, str):
        t = axis_type(type_arg)  # a label: our extension, A1111 takes indices only
    elif isinstance(type_arg, int) and not isinstance(type_arg, bool):
        listed = (*names, *_DEV_AXES)
        if not 0 <= type_arg < len(listed):
            raise AxisError(f"{where}: {type_arg} is not an axis index; A1111's list for this mode has 0 to {len(listed) - 1} (0 Nothing, 4 Steps, ...).")
        name = listed[type_arg]
        if name not in AXES:
            raise _unsupported(name)
        t = AXES[name]
    else:
        raise AxisError(f"{where}: {type_arg!r} must be an axis index (a whole number, e.g. 4 for Steps).")
    if t.label == "Nothing":
        return Axis("Nothing", [None], "")
    if t.choices and not csv_mode and dropdown_arg:
        if not isinstance(dropdown_arg, (list, tuple)) or not all(isinstance(v, str) for v in dropdown_arg):
            raise AxisError(f"{t.label}: the {letter} values dropdown must be a list of names; got {dropdown_arg!r}.")
        items = [v.strip() for v in dropdown_arg]
        return Axis(t.label, _typed(t, items, _csv_join(items)), _csv_join(items))
    if values_arg is None:
        values_arg = ""
    if isinstance(values_arg, (int, float)) and not isinstance(values_arg, bool):
        values_arg = str(values_arg)
    if not isinstance(values_arg, str):
        raise AxisError(f"{t.label}: the {letter} values must be text like {t.hint or 'a,b,c'!r}; got {values_arg!r}.")
    return Axis(t.label, parse_values(t.label, values_arg), values_arg.strip())


def script_args_to_axes(args: list, mode: str = "txt2img") -> tuple[Axis, Axis, Axis, dict]:
    """(x, y, z, options) from an A1111 API request's ``script_args`` for
    ``script_name: "x/y/z plot"`` (h.1).  Unused axes come back as Nothing axes.

    ``*_type`` is an index into A1111's axis list for ``mode`` ("txt2img" or "img2img";
    TXT2IMG_AXES / IMG2IMG_AXES), or, as our extension, a label.  Dropdown axes
    (Sampler, Schedule type, Checkpoint name, VAE) take the ``*_values_dropdown`` list
    as A1111 does unless ``csv_mode`` is set or the list is empty; then the text.
    Missing trailing flags take A1111's defaults (SCRIPT_FLAGS)."""
    if mode not in ("txt2img", "img2img"):
        raise AxisError(f"X/Y/Z plot: mode must be 'txt2img' or 'img2img'; got {mode!r}.")
    if not isinstance(args, (list, tuple)) or len(args) < 9:
        raise AxisError(
            "X/Y/Z plot: script_args must be a list starting x_type, x_values, x_values_dropdown, "
            "y_type, y_values, y_values_dropdown, z_type, z_values, z_values_dropdown, then the flags "
            f"({', '.join(n for n, _ in SCRIPT_FLAGS)}); got {args!r}."
        )
    if len(args) > 9 + len(SCRIPT_FLAGS):
        raise AxisError(f"X/Y/Z plot: script_args has {len(args)} entries; at most {9 + len(SCRIPT_FLAGS)} are known.")
    options = {name: default for name, default in SCRIPT_FLAGS}
    for (name, default), v in zip(SCRIPT_FLAGS, args[9:]):
        if v is None:
            continue
        if isinstance(default, bool):
            if not isinstance(v, bool):
                raise AxisError(f"X/Y/Z plot: {name} must be true or false; got {v!r}.")
        elif isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise AxisError(f"X/Y/Z plot: {name} must be a whole number of pixels, 0 or more; got {v!r}.")
        options[name] = v
    names = TXT2IMG_AXES if mode == "txt2img" else IMG2IMG_AXES
    axes = [
        _api_axis(letter, *args[i * 3: i * 3 + 3], names, options["csv_mode"])
        for i, letter in enumerate("XYZ")
    ]
    return axes[0], axes[1], axes[2], options


def infotext_keys(x: Optional[Axis], y: Optional[Axis] = None, z: Optional[Axis] = None, fixed_seeds: bool = True) -> dict[str, str]:
    """The grid picture's infotext keys (h.5), in A1111's order: Script, then per used
    axis "<L> Type", "<L> Values" (the values text as given) and, for seed axes whose
    -1 values were fixed (``fixed_seeds``: A1111's "Keep -1 for seeds" unticked),
    "Fixed <L> Values" with the seeds used."""
    keys = {"Script": "X/Y/Z plot"}
    for letter, axis in zip("XYZ", (x, y, z)):
        if axis is None or axis.label == "Nothing":
            continue
        keys[f"{letter} Type"] = axis.label
        keys[f"{letter} Values"] = axis.raw
        if fixed_seeds and axis.label in SEED_AXES:
            keys[f"Fixed {letter} Values"] = ", ".join(str(v) for v in axis.values)
    return keys
