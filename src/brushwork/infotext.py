"""A1111-compatible "parameters" text (infotext): writing, reading, typing.

The infotext is the de-facto interchange format for Stable Diffusion
settings: other tools paste it back, image sites index it, and users share
it.  Brushwork therefore writes it byte-for-byte the way AUTOMATIC1111
v1.10.1 does and reads it back with the same (lenient) rules, so texts move
freely in both directions.  This module is deliberately torch-free.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "GenerationParams",
    "InfotextError",
    "RNG_SOURCES",
    "format_infotext",
    "noise_settings",
    "parse_infotext",
    "params_from_infotext",
]

NEGATIVE_PREFIX = "Negative prompt:"

#: The noise sources of the "RNG" key (A1111's randn_source setting); noise.py makes them.
RNG_SOURCES = ("CPU", "GPU", "NV")
#: A1111 writes "RNG" only when it is not its default, so a text without it means GPU.
DEFAULT_RNG = "GPU"

# The keys Brushwork writes from typed fields.  Anything else read from an
# infotext ends up in ``GenerationParams.extra`` so that nothing is lost.
_TYPED_KEYS = frozenset(
    {
        "Prompt",
        "Negative prompt",
        "Steps",
        "Sampler",
        "Schedule type",
        "CFG scale",
        "Seed",
        "Size",
        "Size-1",
        "Size-2",
        "Model hash",
        "Model",
        "Clip skip",
        "Version",
    }
)

# The parameter line is a list of ``Key: value`` pairs.  A key is a word
# character followed by at least one more word character, space, hyphen or
# slash, then a colon; the value is either a JSON-style double-quoted string
# (only when a comma or the end of the line follows its closing quote) or
# everything up to the next comma.  Text that does not fit is skipped.
#
# _PAIR_RE reads this grammar in one pass over the line.  Every start inside
# a run of key characters fails at the lookbehind at once, and once a key is
# found the value never fails (the plain form always fits), so nothing is
# retried: a hostile megabyte costs a fraction of a second.  The earlier
# pattern let finditer retry every start inside a run and took quadratic time
# (16k characters of "a" took seconds).  tests/test_infotext.py keeps that
# pattern as the reference and checks that both read the same pairs.
_PAIR_RE = re.compile(
    r"""
    (?<! [\w\ /-] )                     # only at the start of a run of key characters
    [\ /-]*+                            # spaces, slashes, hyphens before the key
    (?P<key> \w [\w\ /-]+ )
    : \s*+
    (?P<value>
        " (?!") [^\\"]*+ (?: \\. [^\\"]*+ )*+ " (?= ,|$ )   # a quoted string, then , or the end
      | [^,]*+                                             # else up to the next comma
    )
    ,?
    """,
    re.VERBOSE,
)

_KEY_RE = re.compile(r"\w[\w /-]+")
_SIZE_RE = re.compile(r"(\d+)x(\d+)")
_MIN_PARAMETER_PAIRS = 3


#: extra key of a picture whose sampling was stopped part-way (interrupt, skip): the
#: step whose denoised estimate it shows.  Not an AUTOMATIC1111 key (A1111 ignores it).
STOPPED_KEY = "Stopped at step"


def stopped_step(text: str) -> int | None:
    """The step a stopped picture's infotext names (:data:`STOPPED_KEY`), else None."""
    if STOPPED_KEY not in text:  # the common case costs one substring search
        return None
    value = parse_infotext(text).get(STOPPED_KEY, "")
    return int(value) if value.isdigit() else None


class InfotextError(ValueError):
    """Raised when an infotext lacks a needed key or holds an unusable value."""


@dataclass(frozen=True)
class GenerationParams:
    """The settings that describe one generated image.

    Field names follow Brushwork's vocabulary; ``format_infotext`` maps them
    to A1111's keys.  ``extra`` carries every further key (for example
    "Lora hashes" or "Hires upscale") in the order it should be written, so
    that texts from other tools survive a read/write cycle.
    """

    prompt: str
    steps: int
    sampler: str
    cfg_scale: float
    seed: int
    width: int
    height: int
    negative_prompt: str = ""
    schedule: str = "Automatic"
    model_name: str | None = None
    model_hash: str | None = None
    clip_skip: int = 1
    extra: dict[str, str] = field(default_factory=dict)
    version: str | None = None


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


def _quote_value(text: str) -> str:
    """Return ``text`` as it must appear after ``Key: ``.

    Commas, newlines and colons would break the pair grammar, so such values
    become JSON string literals (non-ASCII kept readable, like A1111).  We
    also quote values that start with a double quote, have surrounding
    whitespace or are empty, because the reader would otherwise change them;
    A1111 reads these quoted forms back identically.
    """
    needs_quotes = (
        any(ch in text for ch in ",\n:")
        or text.startswith('"')
        or text != text.strip()
        or text == ""
    )
    return json.dumps(text, ensure_ascii=False) if needs_quotes else text


def _format_pair(key: str, value: object) -> str:
    """Render one ``Key: value`` item, refusing keys that cannot be read back."""
    if not _KEY_RE.fullmatch(key):
        raise ValueError(
            f"infotext key {key!r} cannot be read back: keys must start with a "
            "letter/digit/underscore and contain only word characters, spaces, "
            "hyphens or slashes (at least 2 characters)"
        )
    text = str(value)
    if text == key:  # A1111 writes such flags as a bare key.
        return key
    return f"{key}: {_quote_value(text)}"


#: Forge's key of Flux.1 dev's distilled guidance, written right after "CFG scale"
DISTILLED_KEY = "Distilled CFG Scale"

#: A1111's base keys that Brushwork keeps in ``GenerationParams.extra``, with their
#: place in A1111's base order (Clip skip is 19): written there, not after the extras
BASE_EXTRA_ORDER = {
    "VAE hash": 13, "VAE": 13.5,  # only when a VAE file is used (vae_select.py)
    "Variation seed": 14, "Variation seed strength": 15, "Seed resize from": 16, "Denoising strength": 17,
    "Conditional mask weight": 18, "ENSD": 20, "Token merging ratio": 21, "Token merging ratio hr": 22,
    "Init image hash": 23, "RNG": 24, "Tiling": 25,
}


def _parameter_items(params: GenerationParams) -> list[tuple[str, object]]:
    """List the parameter-line pairs in A1111's key order (None = skipped): the base
    keys (some of them held in ``extra``) in their order, then the other extras in
    the order they were added."""
    base_extra = sorted((BASE_EXTRA_ORDER[k], k) for k in params.extra if k in BASE_EXTRA_ORDER)
    before_clip = [(k, params.extra[k]) for n, k in base_extra if n < 19]
    after_clip = [(k, params.extra[k]) for n, k in base_extra if n > 19]
    items: list[tuple[str, object]] = [
        ("Steps", params.steps),
        ("Sampler", params.sampler),
        ("Schedule type", params.schedule or None),
        ("CFG scale", params.cfg_scale),
        ("Distilled CFG Scale", params.extra.get(DISTILLED_KEY)),  # Forge's, for Flux.1 dev
        ("Seed", params.seed),
        ("Size", f"{params.width}x{params.height}"),
        ("Model hash", params.model_hash or None),
        ("Model", params.model_name or None),
        *before_clip,
        ("Clip skip", params.clip_skip if params.clip_skip > 1 else None),
        *after_clip,
    ]
    items.extend((k, v) for k, v in params.extra.items() if k not in BASE_EXTRA_ORDER and k != DISTILLED_KEY)
    items.append(("Version", params.version or None))
    return items


def format_pairs(items: dict) -> str:
    """``Key: value, Key: value`` as A1111 writes a parameter line's pairs."""
    return ", ".join(_format_pair(k, v) for k, v in items.items() if v is not None)


def format_infotext(params: GenerationParams) -> str:
    """Write ``params`` exactly like A1111: prompt, negative line, parameters.

    The negative line is left out when the negative prompt is empty, pairs
    with a None value are skipped, and the whole text is trimmed (so an empty
    prompt makes the text start with the next part).
    """
    pairs = [_format_pair(key, value) for key, value in _parameter_items(params) if value is not None]
    parts = [params.prompt]
    if params.negative_prompt:
        parts.append(f"{NEGATIVE_PREFIX} {params.negative_prompt}")
    parts.append(", ".join(pairs))
    return "\n".join(parts).strip()


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


def _decode_value(raw: str) -> str:
    """Undo JSON quoting; keep the raw text when it is not valid JSON.

    Hand-edited texts sometimes contain stray quotes; losing the value would
    be worse than keeping it verbatim.
    """
    if len(raw) >= 2 and raw.startswith('"') and raw.endswith('"'):
        try:
            decoded = json.loads(raw)
        except json.JSONDecodeError:
            return raw
        if isinstance(decoded, str):
            return decoded
    return raw


def _find_pairs(line: str) -> list[tuple[str, str]]:
    """Return the raw ``(key, value)`` pairs of a parameter-line candidate (linear time)."""
    return [(m.group("key"), m.group("value")) for m in _PAIR_RE.finditer(line)]


def _split_prompts(lines: list[str]) -> tuple[str, str]:
    """Split non-parameter lines into prompt and negative prompt.

    Every line is trimmed, as A1111 does; the first line starting with
    "Negative prompt:" switches to the negative prompt for good.
    """
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if not in_negative and line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX):].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    return "\n".join(prompt_lines), "\n".join(negative_lines)


def parse_infotext(text: str) -> dict[str, str]:
    """Read an infotext into a flat ``{key: value}`` map of strings.

    The result always has "Prompt" and "Negative prompt".  Values shaped
    ``WxH`` are additionally split into ``Key-1`` and ``Key-2``.  Typing and
    defaults are left to :func:`params_from_infotext`, mirroring A1111 where
    conversion happens per field.
    """
    lines = text.strip().split("\n")
    pairs: list[tuple[str, str]] = []
    if lines:
        candidate = _find_pairs(lines[-1])
        if len(candidate) >= _MIN_PARAMETER_PAIRS:
            pairs = candidate
            lines = lines[:-1]
    prompt, negative = _split_prompts(lines)
    result: dict[str, str] = {"Prompt": prompt, "Negative prompt": negative}
    for key, raw in pairs:
        value = _decode_value(raw)
        result[key] = value
        size = _SIZE_RE.fullmatch(value)
        if size:
            result[f"{key}-1"] = size.group(1)
            result[f"{key}-2"] = size.group(2)
    return result


# --------------------------------------------------------------------------
# Typing
# --------------------------------------------------------------------------


def _require(data: Mapping[str, str], key: str) -> str:
    """Fetch a mandatory key or explain which one is missing."""
    value = data.get(key)
    if value is None or str(value).strip() == "":
        raise InfotextError(
            f"the image's parameters have no {key!r}; supply it explicitly "
            "or use an infotext written by A1111/Brushwork that includes it"
        )
    return str(value).strip()


def _to_int(key: str, value: str) -> int:
    """Parse an integer field, accepting whole-number floats like ``20.0``."""
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if number.is_integer():
        return int(number)
    raise InfotextError(f"the image's parameters have {key!r} = {value!r}, which is not a whole number")


def _to_float(key: str, value: str) -> float:
    """Parse a float field (``7`` and ``7.0`` are both fine)."""
    try:
        number = float(value)
    except ValueError:
        raise InfotextError(f"the image's parameters have {key!r} = {value!r}, which is not a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise InfotextError(f"the image's parameters have {key!r} = {value!r}, which is not a finite number")
    return number


def _size(data: Mapping[str, str]) -> tuple[int, int]:
    """Width and height from ``Size-1``/``Size-2`` or the unsplit ``Size``."""
    if "Size-1" in data and "Size-2" in data:
        return _to_int("Size-1", str(data["Size-1"])), _to_int("Size-2", str(data["Size-2"]))
    size = _require(data, "Size")
    match = _SIZE_RE.fullmatch(size)
    if not match:
        raise InfotextError(f"the image's parameters have 'Size' = {size!r}; expected WIDTHxHEIGHT such as 512x768")
    return int(match.group(1)), int(match.group(2))


def _derived_size_keys(data: Mapping[str, str]) -> set[str]:
    """Keys like ``Hires resize-1`` that the reader added from a ``WxH`` value."""
    derived: set[str] = set()
    for key, value in data.items():
        if _SIZE_RE.fullmatch(str(value)):
            derived.update({f"{key}-1", f"{key}-2"})
    return derived


def _optional(data: Mapping[str, str], key: str) -> str | None:
    """A present, non-empty value or None."""
    value = data.get(key)
    return str(value) if value not in (None, "") else None


def params_from_infotext(source: str | Mapping[str, str]) -> GenerationParams:
    """Turn an infotext (text or parsed map) into typed :class:`GenerationParams`.

    Missing optional keys get A1111's defaults (Schedule type "Automatic",
    Clip skip 1).  Sampler names are kept as written, including legacy
    combined names such as "DPM++ 2M Karras"; splitting them is the sampler
    registry's job.  Unknown keys are kept in ``extra`` in their order.
    """
    data = parse_infotext(source) if isinstance(source, str) else dict(source)
    width, height = _size(data)
    clip_skip_text = _optional(data, "Clip skip")
    skipped = _TYPED_KEYS | _derived_size_keys(data)
    extra = {key: str(value) for key, value in data.items() if key not in skipped}
    return GenerationParams(
        prompt=str(data.get("Prompt", "")),
        negative_prompt=str(data.get("Negative prompt", "")),
        steps=_to_int("Steps", _require(data, "Steps")),
        sampler=_require(data, "Sampler"),
        schedule=_optional(data, "Schedule type") or "Automatic",
        cfg_scale=_to_float("CFG scale", _require(data, "CFG scale")),
        seed=_to_int("Seed", _require(data, "Seed")),
        width=width,
        height=height,
        model_name=_optional(data, "Model"),
        model_hash=_optional(data, "Model hash"),
        clip_skip=_to_int("Clip skip", clip_skip_text) if clip_skip_text else 1,
        extra=extra,
        version=_optional(data, "Version"),
    )


def noise_settings(source: GenerationParams | Mapping[str, str]) -> tuple[str, int]:
    """The noise an infotext asks for: (RNG source, ENSD).

    A missing "RNG" means GPU, AUTOMATIC1111's default, which it leaves out of the
    text; a missing "ENSD" means 0 (A1111 writes it only for the samplers whose step
    noise it changes).  The source name is read case-insensitively."""
    data = source.extra if isinstance(source, GenerationParams) else source
    rng_text = _optional(data, "RNG")
    rng = DEFAULT_RNG if rng_text is None else rng_text.strip().upper()
    if rng not in RNG_SOURCES:
        raise InfotextError(f"the image's parameters have 'RNG' = {rng_text!r}; expected one of {', '.join(RNG_SOURCES)}")
    ensd_text = _optional(data, "ENSD")
    ensd = 0 if ensd_text is None else _to_int("ENSD", ensd_text.strip())
    if ensd < 0:
        raise InfotextError(f"the image's parameters have 'ENSD' = {ensd_text!r}; the eta noise seed delta is a whole number from 0 up")
    return rng, ensd
