"""AUTOMATIC1111's prompt syntax, parsed by pure functions (no torch).

Four independent steps, in the order a prompt goes through them:

1. :func:`extract_extra_networks` removes ``<lora:name:te:unet>`` style tags.
2. :func:`split_and` splits the positive prompt on ``AND`` into weighted sub-prompts.
3. :func:`schedule_prompt` resolves prompt editing ``[from:to:when]`` and
   alternation ``[a|b]`` into the text used at each sampling step.
4. :func:`parse_attention` turns emphasis ``(x)``, ``[x]``, ``(x:1.3)`` and ``BREAK``
   into (text, weight) runs.

Nothing here raises on odd input: malformed syntax falls back to literal text,
as in AUTOMATIC1111, and problems worth telling the user are returned as warnings.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

ROUND_UP = 1.1
SQUARE_DOWN = 1 / 1.1
BREAK_WEIGHT = -1.0

# ----------------------------------------------------------------- 4. emphasis

_ATTENTION_TOKEN = re.compile(
    r"""
    \\\(|\\\)|\\\[|\\\]|\\\\|\\|   # escapes (and a lone backslash)
    \(|\[|                          # openers
    :\s*([+-]?[.\d]+)\s*\)|         # ':1.3)' closes a weighted round group
    \)|\]|                          # closers
    [^\\()\[\]:]+|                  # plain text
    :                               # a colon that is just text
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def parse_attention(text: str) -> list[tuple[str, float]]:
    """(text, weight) runs of a prompt; ``BREAK`` becomes ("BREAK", -1).

    ``(x)`` multiplies by 1.1, ``[x]`` by 1/1.1, ``(x:w)`` by w; nesting
    multiplies; unclosed brackets close at the end; unmatched closers and escaped
    brackets are literal text; neighbouring runs of equal weight merge.
    """
    runs: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    for m in _ATTENTION_TOKEN.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\") and len(token) == 2 and token[1] in "()[]\\":
            runs.append([token[1], 1.0])
        elif token == "(":
            round_open.append(len(runs))
        elif token == "[":
            square_open.append(len(runs))
        elif weight is not None and round_open:
            try:
                factor = float(weight)
            except ValueError:
                factor = None
            if factor is None or not math.isfinite(factor):
                runs.append([token, 1.0])  # "(x:1.2.3)": not a number, keep it as text
            else:
                scale(round_open.pop(), factor)
        elif token == ")" and round_open:
            scale(round_open.pop(), ROUND_UP)
        elif token == "]" and square_open:
            scale(square_open.pop(), SQUARE_DOWN)
        else:
            parts = _BREAK.split(token)
            for i, part in enumerate(parts):
                if i > 0:
                    runs.append(["BREAK", BREAK_WEIGHT])
                if part:
                    runs.append([part, 1.0])
    for start in round_open:
        scale(start, ROUND_UP)
    for start in square_open:
        scale(start, SQUARE_DOWN)
    if not runs:
        return [("", 1.0)]
    merged: list[list] = [runs[0]]
    for run in runs[1:]:
        if run[1] == merged[-1][1] and BREAK_WEIGHT not in (run[1],):
            merged[-1][0] += run[0]
        else:
            merged.append(run)
    return [(t, w) for t, w in merged]


# ----------------------------------------------------------------- 3. scheduling


@dataclass
class _Text:
    text: str


@dataclass
class _Group:
    """Brackets that are not scheduling or alternation: kept verbatim for step 4."""

    open: str
    body: list
    close: str


@dataclass
class _Scheduled:
    before: list
    after: list
    when: str


@dataclass
class _Alternate:
    options: list[list]


class _Unparsable(ValueError):
    pass


_NUMBER = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*")


class _Parser:
    def __init__(self, text: str):
        self.s = text
        self.i = 0

    def seq(self, stops: str) -> list:
        out: list = []
        buf: list[str] = []

        def flush() -> None:
            if buf:
                out.append(_Text("".join(buf)))
                buf.clear()

        while self.i < len(self.s):
            c = self.s[self.i]
            if c == "\\" and self.i + 1 < len(self.s):
                buf.append(self.s[self.i : self.i + 2])
                self.i += 2
            elif c in stops:
                break
            elif c == "(":
                flush()
                self.i += 1
                body = self.seq(")")
                if self.i >= len(self.s):
                    raise _Unparsable("unclosed (")
                self.i += 1
                out.append(_Group("(", body, ")"))
            elif c == "[":
                flush()
                self.i += 1
                out.append(self.square())
            else:
                buf.append(c)
                self.i += 1
        flush()
        return out

    def square(self) -> object:
        parts: list[list] = []
        seps: list[str] = []
        while True:
            parts.append(self.seq(":|]"))
            if self.i >= len(self.s):
                raise _Unparsable("unclosed [")
            c = self.s[self.i]
            self.i += 1
            if c == "]":
                break
            seps.append(c)
        if not seps:
            return _Group("[", parts[0], "]")
        if set(seps) == {"|"}:
            return _Alternate(parts)
        if set(seps) == {":"} and len(parts) in (2, 3):
            when = _plain(parts[-1])
            if when is not None and _NUMBER.fullmatch(when):
                before = parts[0] if len(parts) == 3 else []
                return _Scheduled(before, parts[-2], when.strip())
        raise _Unparsable("a [...] group that is neither emphasis, editing nor alternation")


def _plain(nodes: list) -> str | None:
    if all(isinstance(n, _Text) for n in nodes):
        return "".join(n.text for n in nodes)
    return None


def _when_step(when: str, steps: int, first_pass: int = 0) -> int:
    """The step after which ``when`` switches.  In a hires pass (``first_pass``: the
    first pass's steps; A1111's "new timeline"), a whole number continues the first
    pass's count and a fraction from 1 to 2 is a fraction of the hires pass; a
    switch that happened in the first pass is at step 0 or below (already done)."""
    v = float(when)
    if "." in when:
        v = (v - (1.0 if first_pass else 0.0)) * steps
    else:
        v -= first_pass
    return min(steps, int(v))


def _boundaries(nodes: list, steps: int, out: set[int], first_pass: int = 0) -> None:
    for n in nodes:
        if isinstance(n, _Group):
            _boundaries(n.body, steps, out, first_pass)
        elif isinstance(n, _Scheduled):
            out.add(_when_step(n.when, steps, first_pass))
            _boundaries(n.before, steps, out, first_pass)
            _boundaries(n.after, steps, out, first_pass)
        elif isinstance(n, _Alternate):
            out.update(range(1, steps + 1))
            for o in n.options:
                _boundaries(o, steps, out, first_pass)


def _render(nodes: list, step: int, steps: int, first_pass: int = 0) -> str:
    parts = []
    for n in nodes:
        if isinstance(n, _Text):
            parts.append(n.text)
        elif isinstance(n, _Group):
            parts.append(n.open + _render(n.body, step, steps, first_pass) + n.close)
        elif isinstance(n, _Scheduled):
            chosen = n.before if step <= _when_step(n.when, steps, first_pass) else n.after
            parts.append(_render(chosen, step, steps, first_pass))
        else:
            parts.append(_render(n.options[(step - 1) % len(n.options)], step, steps, first_pass))
    return "".join(parts)


def schedule_prompt(text: str, steps: int, first_pass: int = 0) -> list[tuple[int, str]]:
    """(end_step, text) segments: step s (from 1) uses the first segment with end_step >= s.

    ``[from:to:when]`` switches after step ``when`` (a number with a dot is a
    fraction of ``steps``), ``[to:when]`` adds text, ``[from::when]`` removes it,
    ``[a|b|c]`` cycles every step.  A prompt that does not parse is used unchanged.
    ``first_pass``: the steps of the first pass when this is a hires pass of
    ``steps`` steps (see :func:`_when_step`).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    parser = _Parser(text)
    try:
        tree = parser.seq("")
    except (_Unparsable, RecursionError):
        return [(steps, text)]
    ends = {steps}
    _boundaries(tree, steps, ends, first_pass)
    segments: list[tuple[int, str]] = []
    for end in sorted(e for e in ends if e >= 1):
        rendered = _render(tree, end, steps, first_pass)
        if segments and segments[-1][1] == rendered:
            segments[-1] = (end, rendered)
        else:
            segments.append((end, rendered))
    return segments


# ----------------------------------------------------------------- 2. AND

_AND = re.compile(r"\bAND\b")
_TRAILING_WEIGHT = re.compile(r"^(.*?)(?:\s*:\s*([-+]?(?:\d+\.?\d*|\.\d+)))?\s*$", re.S)


def split_and(text: str) -> list[tuple[str, float]]:
    """Sub-prompts of a positive prompt joined by ``AND``, each with its weight
    (``a cat :1.2 AND a dog``); the default weight is 1.0."""
    out = []
    for part in _AND.split(text):
        m = _TRAILING_WEIGHT.match(part)
        assert m is not None  # the pattern matches every string
        out.append((m.group(1), float(m.group(2)) if m.group(2) is not None else 1.0))
    return out


# ----------------------------------------------------------------- 1. extra networks

_TAG = re.compile(r"<(\w+):([^>]+)>")


@dataclass(frozen=True)
class ExtraNetwork:
    """One ``<kind:name:...>`` tag.  For LoRAs: ``te`` and ``unet`` multipliers."""

    kind: str
    name: str
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None
    raw: str = ""


@dataclass
class ExtraNetworkParse:
    text: str
    networks: list[ExtraNetwork] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _number(value: str, what: str, tag: str, warnings: list[str]) -> float | None:
    try:
        v = float(value)
    except ValueError:
        warnings.append(f"{tag}: the {what} {value!r} is not a number; this tag was ignored (write e.g. <lora:name:0.8>).")
        return None
    if not math.isfinite(v):
        warnings.append(f"{tag}: the {what} must be a finite number; this tag was ignored.")
        return None
    return v


def extract_extra_networks(text: str) -> ExtraNetworkParse:
    """Remove ``<lora:NAME:TE:UNET:DYN>`` tags (``<lyco:...>`` too, named ``te=``,
    ``unet=``, ``dyn=`` accepted; unet defaults to te).  Other ``<kind:...>`` tags are
    removed and returned with their name only.  Malformed tags are ignored with a warning."""
    found: list[ExtraNetwork] = []
    warnings: list[str] = []

    def take(m: re.Match) -> str:
        kind, args = m.group(1).lower(), m.group(2).split(":")
        tag = m.group(0)
        kind = "lora" if kind == "lyco" else kind
        name = args[0].strip()
        if not name:
            warnings.append(f"{tag}: no name given; this tag was ignored.")
            return ""
        positional = [a for a in args[1:] if "=" not in a]
        named = dict(a.split("=", 1) for a in args[1:] if "=" in a)
        te = unet = 1.0
        dyn = None
        if positional or "te" in named:
            v = _number((positional[0] if positional else named["te"]).strip(), "weight", tag, warnings)
            if v is None:
                return ""
            te = unet = v
        if len(positional) > 1 or "unet" in named:
            v = _number((positional[1] if len(positional) > 1 else named["unet"]).strip(), "UNet weight", tag, warnings)
            if v is None:
                return ""
            unet = v
        if len(positional) > 2 or "dyn" in named:
            v = _number((positional[2] if len(positional) > 2 else named["dyn"]).strip(), "dyn value", tag, warnings)
            if v is None:
                return ""
            dyn = int(v)
        found.append(ExtraNetwork(kind, name, te, unet, dyn, tag))
        return ""

    return ExtraNetworkParse(_TAG.sub(take, text), found, warnings)
