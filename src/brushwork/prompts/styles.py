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
    if PLACEHOLDER in style_text:
        left, _, right = style_text.partition(PLACEHOLDER)
        if len(prompt) >= len(left) + len(right) and prompt.startswith(left) and prompt.endswith(right):
            inner = prompt[len(left) : len(prompt) - len(right)]
            if merge_prompt(style_text, inner) == prompt:
                return True, inner
        return False, prompt
    text = style_text.strip()
    if not text:
        return True, prompt
    if prompt == text:
        return True, ""
    if prompt.endswith(", " + text):
        return True, prompt[: -len(text) - 2]
    return False, prompt


def style_names(recorded: str) -> list[str]:
    """The style names an infotext's ``Styles`` value lists ("Watercolor, Cinematic")."""
    return [n.strip() for n in recorded.split(",") if n.strip()]


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
            warnings.append(f"style {name!r} could not be taken out of the prompt (changed since the image was made, or the prompt was edited); the prompt is used as it was written")
            continue
        prompt, negative_prompt = new_p, new_n
        taken.insert(0, name)
    return Styled(prompt, negative_prompt, taken, warnings)


def add_style(path: Path, style: PromptStyle, replace: bool = False) -> None:
    """Save ``style`` in the styles file at ``path`` (created with a header when
    missing).  A new style is appended as one row, leaving every other byte of the
    file as it was; an existing name is refused unless ``replace``, which rewrites
    only that row's three cells (other columns and rows are kept)."""
    if not style.name or style.name != style.name.strip():
        raise StylesFileError("a style needs a name without leading or trailing spaces")
    if style.name == "None":
        raise StylesFileError("'None' means 'no style' to AUTOMATIC1111 clients; choose another name")
    existing = read_styles(path)
    taken = any(s.name == style.name for s in existing)
    if taken and not replace:
        raise StylesFileError(f"a style named {style.name!r} is already saved in {path}; pass --replace to change it")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(format_styles([style]), encoding="utf-8")
        return
    text = path.read_text(encoding="utf-8")
    if not taken:
        row = io.StringIO()
        csv.writer(row, lineterminator="\n").writerow([style.name, style.prompt, style.negative_prompt])
        with path.open("a", encoding="utf-8", newline="") as fh:
            fh.write(("" if text.endswith("\n") or not text else "\n") + row.getvalue())
        return
    rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    names = [h.strip().lower() for h in rows[0]]
    col = {c: names.index(c) for c in COLUMNS if c in names}
    for row in rows[1:]:
        if col["name"] < len(row) and row[col["name"]].strip() == style.name:
            row.extend([""] * (max(col.values()) + 1 - len(row)))
            for c, value in zip(COLUMNS, (style.name, style.prompt, style.negative_prompt)):
                if c in col:
                    row[col[c]] = value
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(out.getvalue(), encoding="utf-8")
    tmp.replace(path)
