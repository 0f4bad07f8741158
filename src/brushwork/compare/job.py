"""One comparison job: the cells of an X/Y/Z grid, run in the cheapest order, and
the grid picture with its infotext.

:func:`plan_cells` turns a :class:`Comparison` (a base request and up to three
axes) into cells, each a complete request of its own (seeds fixed once for the
whole grid, so every cell shares them).  :func:`work_order` groups the cells by
checkpoint (each model loaded once: the checkpoint axis is the outer loop) and,
within a model, into batches of cells that differ only in seed or CFG scale: those
run as one batched UNet call (one guidance scale per image), and a first network
call that several cells have in common (the same seed and prompt at the same first
noise level) runs once (sampling/shared_calls.py).  :func:`run_comparison`
runs them on an :class:`~brushwork.engine.Engine` and yields each cell's picture as
soon as it is decoded; :func:`grid_picture` lays the grid out (compare/grid.py).

A cell run alone is the same generation ``brushwork generate`` makes with its
settings (bit for bit); cells batched together differ only by float rounding.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Callable, Iterator, Optional

from PIL import Image

from ..infotext import format_infotext
from ..sampling.shared_calls import SharedCalls
from ..request import MAX_BATCH_SIZE, GenerationRequest, RequestError, planned_steps, resolve_seed
from .axes import SEED_AXES, Axis, AxisError, apply_value, cell_seed, grid_shape, infotext_keys, seeds_for_grid
from .grid import check_grid_size, draw_grid, draw_xyz, label_text

if TYPE_CHECKING:
    from ..engine import GeneratedImage

#: fields that may differ between the cells of one batch (the prompts: see _batch_key)
_BATCHABLE = {"seed", "cfg_scale"}
_PROMPTS = {"prompt", "negative_prompt"}


@dataclass
class Comparison:
    request: GenerationRequest  # the base settings of every cell
    x: Axis
    y: Optional[Axis] = None
    z: Optional[Axis] = None
    #: A1111's "vary seeds" flags per axis: the seed counts up along that axis
    vary_seeds: tuple[bool, bool, bool] = (False, False, False)
    #: A1111's "Keep -1 for seeds": every cell draws its own random seed
    keep_random_seeds: bool = False
    draw_legend: bool = True
    margin: int = 0

    def axes(self) -> list[Optional[Axis]]:
        return [self.x, self.y, self.z]


@dataclass
class Cell:
    ix: int
    iy: int
    iz: int
    request: GenerationRequest  # complete for this cell (seed fixed unless kept random)
    model: Optional[str] = None  # the Checkpoint name axis's value; None: the current model
    index: int = 0  # position in the grid, row-major over z, y, x


@dataclass
class CellResult:
    cell: Cell
    image: "GeneratedImage"
    done: int  # cells finished so far
    total: int


def _values(axis: Optional[Axis]) -> list:
    return [None] if axis is None or axis.label == "Nothing" else list(axis.values)


def plan_cells(cmp: Comparison, rng: Optional[random.Random] = None) -> list[Cell]:
    """Every cell's request, X fastest, then Y, then Z.  Raises AxisError (e.g. a
    Prompt S/R string in neither prompt) before any work."""
    rng = rng or random.SystemRandom()
    if cmp.request.batch_size != 1 or cmp.request.batch_count != 1:
        raise AxisError("a comparison makes one picture per cell: leave batch size and batch count at 1 (more seeds: a Seed axis)")
    base = cmp.request
    if not cmp.keep_random_seeds:
        base = replace(base, seed=resolve_seed(base.seed, rng))
        if base.subseed == -1:
            base = replace(base, subseed=resolve_seed(-1, rng))
    axes = cmp.axes()
    values = []
    for axis in axes:
        v = _values(axis)
        if axis is not None and axis.label in SEED_AXES and not cmp.keep_random_seeds:
            v = seeds_for_grid(v, rng)
        values.append(v)
    nx, ny, nz = grid_shape(*axes)
    cells = []
    for iz, vz in enumerate(values[2]):
        for iy, vy in enumerate(values[1]):
            for ix, vx in enumerate(values[0]):
                req, model = base, None
                for axis, value, vals in ((axes[0], vx, values[0]), (axes[1], vy, values[1]), (axes[2], vz, values[2])):
                    if axis is None or axis.label == "Nothing":
                        continue
                    if axis.type.model:
                        model = value
                    req = apply_value(axis.label, value, req, vals[0])
                if any(cmp.vary_seeds) and req.seed != -1:
                    req = replace(req, seed=cell_seed(req.seed, ix, iy, iz, nx, ny, cmp.vary_seeds))
                cells.append(Cell(ix, iy, iz, req, model, len(cells)))
    return cells


def _batch_key(req: GenerationRequest) -> tuple:
    # CFG 1 skips the negative-prompt pass when run alone: batched with other scales
    # it would pay for that pass, so such cells batch only with each other
    key = [req.cfg_scale == 1]
    # cells whose prompts differ batch too (each image its own text features), as
    # long as the merged LoRAs and the AND weights are the same; not with the hires
    # fix, whose second pass has one prompt
    by_prompt = req.hires
    if not by_prompt:
        from ..prompts import extract_extra_networks, split_and

        tags = extract_extra_networks(req.prompt)
        key += [repr([(n.kind, n.name.lower(), n.te, n.unet) for n in tags.networks]), repr([w for _, w in split_and(tags.text)])]
    for f in fields(req):
        if f.name in _BATCHABLE or (f.name in _PROMPTS and not by_prompt):
            continue
        v = getattr(req, f.name)
        key.append(id(v) if isinstance(v, Image.Image) else repr(v))
    return tuple(key)


def work_order(cells: list[Cell], max_batch: int = MAX_BATCH_SIZE, current: Optional[str] = None) -> list[list[Cell]]:
    """Batches of cells in the order they run: grouped by checkpoint (the cells of
    ``current``, the model loaded now, first; then each other model once), then by
    everything but seed and CFG, at most ``max_batch`` cells each."""
    by_model: dict[Optional[str], dict[tuple, list[Cell]]] = {}
    for cell in cells:
        by_model.setdefault(cell.model, {}).setdefault(_batch_key(cell.request), []).append(cell)
    order = sorted(by_model, key=lambda m: m is not None and m != current)  # stable: the rest keep their order
    batches = []
    for groups in (by_model[m] for m in order):
        for group in groups.values():
            batches += [group[i:i + max_batch] for i in range(0, len(group), max_batch)]
    return batches


def check_vae_values(home, cmp: Comparison) -> None:
    """Every value of a VAE axis must be Automatic, None or a VAE file of the data home
    (a RequestError listing them otherwise), before any cell runs."""
    from ..vae_select import check_vae_name

    for axis in cmp.axes():
        if axis is not None and axis.type.vae:
            for value in axis.values:
                check_vae_name(home, value)


def check_size(cmp: Comparison, sizes: list[tuple[int, int]]) -> None:
    """Refuse a grid picture beyond the limit before any work (GridTooLarge);
    ``sizes``: each cell's (width, height)."""
    nx, ny, nz = grid_shape(*cmp.axes())
    check_grid_size(nx, ny, nz, max(w for w, _ in sizes), max(h for _, h in sizes))


def run_comparison(engine, cmp: Comparison, progress: Optional[Callable] = None, control=None, rng: Optional[random.Random] = None,
                   max_batch: int = MAX_BATCH_SIZE, shared: Optional[SharedCalls] = None) -> Iterator[CellResult]:
    """Run every cell on ``engine``, yielding each as it is decoded.  The model loaded
    before is loaded again afterwards.  ``progress`` receives engine.Progress over
    all cells' steps; ``shared`` (made here when None) counts the first network calls
    the cells had in common."""
    import time

    cells = plan_cells(cmp, rng)
    engine._require_model()
    # each cell as the current model completes it (another checkpoint's own default
    # size and steps may differ: its cells then run with its own)
    completed = {c.index: engine.complete(c.request, warn=False) for c in cells}
    check_size(cmp, [(r.width, r.height) for r in completed.values()])
    original = engine.model.path if engine.model is not None else None
    batches = work_order(cells, max_batch, engine.model.name if engine.model is not None else None)
    steps = {i: planned_steps(r) for i, r in completed.items()}
    total_steps = sum(steps[b[0].index] for b in batches)  # a batch runs its steps once for all its cells
    done_steps, done_cells, t0 = 0, 0, time.perf_counter()
    shared = SharedCalls() if shared is None else shared  # cells' first network calls in common run once
    try:
        for batch in batches:
            if control is not None and control.interrupted:
                return
            if batch[0].model is not None:
                engine.load(batch[0].model)
            images = _run_batch(engine, batch, control, progress, done_steps, total_steps, t0, shared)
            if images is None:
                return
            done_steps += steps[batch[0].index]
            for cell, image in zip(batch, images):
                done_cells += 1
                yield CellResult(cell, image, done_cells, len(cells))
    finally:
        if original is not None and (engine.model is None or engine.model.path != original):
            engine.load(original)


def _run_batch(engine, batch: list[Cell], control, progress, done_before: int, total: int, t0: float, shared=None):
    """One batch of cells through Engine.prepare / run_batch; a batch whose memory
    estimate does not fit is halved until it does."""
    first = batch[0].request
    try:
        prep = engine.prepare(replace(first, batch_size=len(batch)), control)
    except RequestError as exc:
        if len(batch) > 1 and "memory" in str(exc):
            half = len(batch) // 2
            a = _run_batch(engine, batch[:half], control, progress, done_before, total, t0, shared)
            b = None if a is None else _run_batch(engine, batch[half:], control, progress, done_before, total, t0, shared)
            return None if b is None else a + b
        raise
    if prep is None:
        return None
    seeds = [resolve_seed(c.request.seed) for c in batch]
    subseeds = [prep.req.subseed] * len(batch) if prep.req.subseed_strength else None
    cfg = [float(c.request.cfg_scale if c.request.cfg_scale is not None else prep.req.cfg_scale) for c in batch]
    cfg_scales = None if len(set(cfg)) == 1 else cfg
    if cfg_scales is None and cfg[0] != prep.req.cfg_scale:
        prep = replace(prep, req=replace(prep.req, cfg_scale=cfg[0]))
    prompts = None
    if len({(c.request.prompt, c.request.negative_prompt) for c in batch}) > 1:  # each cell its own encoded prompts
        prompts = [engine.cell_prompt(prep, c.request.prompt, c.request.negative_prompt, c.request.styles) for c in batch]
    return engine.run_batch(prep, seeds, subseeds, cfg_scales, control, progress, done_before, total, t0, prompts, shared)


def grid_picture(cmp: Comparison, results: list[CellResult]) -> tuple[Image.Image, str]:
    """The grid picture (X across, Y down, one sub-grid per Z in a row) and its
    infotext: the first cell's, plus A1111's X/Y/Z plot keys."""
    nx, ny, nz = grid_shape(*cmp.axes())
    at = {(r.cell.ix, r.cell.iy, r.cell.iz): r.image.image for r in results}

    def labels(axis: Optional[Axis]) -> Optional[list[str]]:
        if not cmp.draw_legend or axis is None or axis.label == "Nothing":
            return None
        return [label_text(axis.label, v) for v in axis.values]

    grids = []
    for iz in range(nz):
        cells = [[at.get((ix, iy, iz)) for ix in range(nx)] for iy in range(ny)]
        grids.append(draw_grid(cells, labels(cmp.x), labels(cmp.y), margin=cmp.margin))
    picture = grids[0] if nz == 1 else draw_xyz(grids, labels(cmp.z), margin=cmp.margin)
    first = min(results, key=lambda r: r.cell.index).image.params
    params = replace(first, extra={**first.extra, **infotext_keys(cmp.x, cmp.y, cmp.z, fixed_seeds=not cmp.keep_random_seeds)})
    return picture, format_infotext(params)
