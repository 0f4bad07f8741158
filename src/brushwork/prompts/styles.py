"""Saved prompt styles, as AUTOMATIC1111 keeps them: pure functions, no torch.

A style is a named pair of texts kept in ``HOME/styles.csv`` (columns ``name``,
``prompt``, ``negative_prompt``, with a header row; files written by AUTOMATIC1111
work unchanged).  Applying a style to a prompt:

* if the style's text contains ``{prompt}``, the user's prompt is put in its place;
* otherwise the style's text is appended after a comma (nothing is added for an
  empty style text, and an empty user prompt leaves just the style).

Several styles apply in the order given; the negative prompt is treated the same
way.  An unknown style name is a warning, never an error (as in AUTOMATIC1111).
The inverse, :func:`extract_styles`, takes styles back out of a prompt so an
image made with styles is re-created with the same style names instead of the
styles being applied twice.
"""
from __future__ import annotations

import csv
import difflib
import io
from dataclasses import dataclass, field
from pathlib import Path

PLACEHOLDER = "{prompt}"
COLUMNS = ("name", "prompt", "negative_prompt")
#: a styles file larger than this is refused (it would be read on every request)
MAX_STYLES_BYTES = 4 * 2**20


class StylesFileError(ValueError):
    """styles.csv cannot be read; the message says what is wrong with it."""


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


@dataclass(frozen=True)
class Styled:
    """A prompt pair with styles applied, and what could not be applied."""

    prompt: str
    negative_prompt: str
    applied: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def parse_styles(text: str, where: str = "styles.csv") -> list[PromptStyle]:
    """Styles from the text of a styles.csv (header row required, extra columns
    ignored; rows without a name are skipped; a later row of the same name wins)."""
    rows = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    header = next(rows, None)
    if header is None:
        return []
    names = [h.strip().lower() for h in header]
    if "name" not in names:
        raise StylesFileError(f"{where}: the first row must be a header with the columns name,prompt,negative_prompt; found {','.join(header)[:80]!r}")
    col = {c: names.index(c) for c in COLUMNS if c in names}
    found: dict[str, PromptStyle] = {}
    for row in rows:
        cell = {c: (row[i] if i < len(row) else "") for c, i in col.items()}
        name = cell.get("name", "").strip()
        if not name:
            continue
        found.pop(name, None)
        found[name] = PromptStyle(name, cell.get("prompt", ""), cell.get("negative_prompt", ""))
    return list(found.values())


def read_styles(path: Path) -> list[PromptStyle]:
    """The styles saved in ``path``; none when the file does not exist."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StylesFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if size > MAX_STYLES_BYTES:
        raise StylesFileError(f"{path} is {size / 2**20:.1f} MB; a styles file may be at most {MAX_STYLES_BYTES // 2**20} MB")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise StylesFileError(f"{path} is not UTF-8 text; save it as UTF-8 CSV with the columns name,prompt,negative_prompt") from None
    except OSError as exc:
        raise StylesFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_styles(text, str(path))


def format_styles(styles: list[PromptStyle]) -> str:
    """The styles.csv text for ``styles`` (what :func:`parse_styles` reads back)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for s in styles:
        writer.writerow([s.name, s.prompt, s.negative_prompt])
    return out.getvalue()


def merge_prompt(style_text: str, prompt: str) -> str:
    """One style's text applied to one prompt."""
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def apply_styles(prompt: str, negative_prompt: str, chosen: list[str], available: list[PromptStyle]) -> Styled:
    """``prompt`` and ``negative_prompt`` with the ``chosen`` styles applied in order.
    Names are matched exactly, then ignoring case; "None" and empty names mean no
    style.  Unknown names are skipped with a warning that lists the saved styles."""
    by_name = {s.name: s for s in available}
    folded = {s.name.casefold(): s for s in available}
    applied, warnings = [], []
    for name in chosen:
        if not name or not name.strip() or name.strip() == "None":
            continue
        style = by_name.get(name) or folded.get(name.strip().casefold())
        if style is None:
            warnings.append(unknown_style_message(name, available))
            continue
        prompt = merge_prompt(style.prompt, prompt)
        negative_prompt = merge_prompt(style.negative_prompt, negative_prompt)
        applied.append(style.name)
    return Styled(prompt, negative_prompt, applied, warnings)


def unknown_style_message(name: str, available: list[PromptStyle]) -> str:
    names = [s.name for s in available]
    if not names:
        return f"style {name!r} not found: no styles are saved yet (add rows name,prompt,negative_prompt to styles.csv in the data folder); the image is made without it"
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return f"style {name!r} not found; the image is made without it.{hint} Saved styles: {', '.join(names)}"


def unmerge_prompt(style_text: str, prompt: str) -> tuple[bool, str]:
    """Undo :func:`merge_prompt`: (True, the prompt before the style) when ``prompt``
    is what applying ``style_text`` gives, else (False, ``prompt``)."""
    style_text = style_text.strip()
    if not style_text:
        return True, prompt
    if PLACEHOLDER in style_text:
        left, _, right = style_text.partition(PLACEHOLDER)
        right = right.replace(PLACEHOLDER, "")  # only the first placeholder can be undone
        stripped = prompt.strip()
        if len(stripped) >= len(left.strip()) + len(right.strip()) and stripped.startswith(left.strip()) and stripped.endswith(right.strip()):
            inner = prompt[prompt.find(left) + len(left) :] if left else prompt
            inner = inner[: len(inner) - len(right)] if right and inner.endswith(right) else inner
            if merge_prompt(style_text, inner) .strip() == prompt.strip():
                return True, inner
        return False, prompt
    if prompt.strip() == style_text:
        return True, ""
    tail = ", " + style_text
    if prompt.rstrip().endswith(tail):
        return True, prompt.rstrip()[: -len(tail)]
    return False, prompt


def extract_styles(prompt: str, negative_prompt: str, names: list[str], available: list[PromptStyle]) -> Styled:
    """Take the named styles back out of a styled prompt pair, last applied first.
    A style that is not saved here, or whose text is not found, stays in the text
    (the result's ``applied`` lists only the styles taken out, in their original
    order, so applying them again gives the same prompts)."""
    by_name = {s.name: s for s in available}
    taken: list[str] = []
    warnings: list[str] = []
    for name in reversed(names):
        style = by_name.get(name)
        if style is None:
            warnings.append(f"style {name!r} is not saved here; its words stay in the prompt")
            continue
        ok_p, new_p = unmerge_prompt(style.prompt, prompt)
        ok_n, new_n = unmerge_prompt(style.negative_prompt, negative_prompt)
        if not (ok_p and ok_n):
            warnings.append(f"style {name!r} has changed since the image was made; the prompt is used as it was written")
            continue
        prompt, negative_prompt = new_p, new_n
        taken.insert(0, name)
    return Styled(prompt, negative_prompt, taken, warnings)
