"""Network calls that several cells of a comparison have in common, made once.

Cells of a Steps x CFG grid share their seed and prompt, so they all start from the
same noisy latents at the same first noise level (the first sigma of a schedule does
not depend on the number of steps): their first UNet evaluation is one and the same
call.  :class:`SharedCalls` makes it once per comparison.  Two cases:

* within a batch: when every image of the batch has the same latents and the same
  conditioning (cells that differ only in CFG scale), the call runs for one image
  (one row per prompt text) and its output is repeated for the others;
* across batches: the reduced call's inputs (latents, timestep, conditioning and the
  network's state: checkpoint and merged LoRAs) are hashed; a later batch whose first
  call hashes the same reuses the output.

A reduced call has exactly the shape and inputs of the same cell's call when run
alone, so a cell whose first evaluation is shared gets that step bit for bit as a
single ``generate`` would.  Only the first call of each sampling run is looked at:
after it, cells with different guidance scales or step counts part ways.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Callable, Hashable

import torch

NetCall = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def _tensors(c: Any) -> list[torch.Tensor]:
    """The tensors of a conditioning (dicts of tensors, nested), in a fixed order."""
    if isinstance(c, torch.Tensor):
        return [c]
    if isinstance(c, dict):
        return [t for k in sorted(c) for t in _tensors(c[k])]
    if c is None:
        return []
    raise TypeError(f"unexpected conditioning part {type(c).__name__}")


def _select(c: Any, rows: torch.Tensor, n: int) -> Any:
    """The conditioning for the given rows (parts whose first dimension is not the
    batch, such as shared time ids, stay as they are)."""
    if isinstance(c, torch.Tensor):
        return c.index_select(0, rows.to(c.device)) if c.dim() > 0 and c.shape[0] == n else c
    if isinstance(c, dict):
        return {k: _select(v, rows, n) for k, v in c.items()}
    return c


def _blocks_equal(t: torch.Tensor, blocks: int, batch: int) -> bool:
    """Whether each of ``blocks`` consecutive groups of ``batch`` rows holds one row repeated."""
    if t.dim() == 0 or t.shape[0] != blocks * batch:
        return True  # not per image
    g = t.reshape(blocks, batch, *t.shape[1:])
    return bool(torch.equal(g, g[:, :1].expand_as(g)))


def digest(*parts: Any) -> str:
    """A content hash of tensors and plain values."""
    h = hashlib.blake2b(digest_size=20)
    for p in parts:
        if isinstance(p, torch.Tensor):
            t = p.detach().to("cpu").contiguous().reshape(-1)
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(p).encode())
        h.update(b"|")
    return h.hexdigest()


class SharedCalls:
    """One comparison's shared first network calls (see the module text).

    ``rows_asked``: rows the first calls asked for; ``rows_run``: rows that ran.
    """

    def __init__(self, max_entries: int = 8):
        self.max_entries = max_entries
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.rows_asked = 0
        self.rows_run = 0

    @property
    def rows_saved(self) -> int:
        return self.rows_asked - self.rows_run

    def wrap(self, net: NetCall, batch: int, state: Hashable) -> NetCall:
        """``net`` for one sampling run of ``batch`` images; ``state`` names the
        network's weights (checkpoint, merged LoRAs, precision)."""
        first = [True]

        def call(x_in: torch.Tensor, t: torch.Tensor, c: Any) -> torch.Tensor:
            if not first[0]:
                return net(x_in, t, c)
            first[0] = False
            return self._first_call(net, x_in, t, c, batch, state)

        return call

    def _first_call(self, net: NetCall, x_in: torch.Tensor, t: torch.Tensor, c: Any, batch: int, state: Hashable) -> torch.Tensor:
        n = x_in.shape[0]
        blocks = n // batch
        rows = None
        if batch > 1:
            if not (_blocks_equal(x_in, blocks, batch) and _blocks_equal(t, blocks, batch) and all(_blocks_equal(p, blocks, batch) for p in _tensors(c))):
                self.rows_asked += n
                self.rows_run += n
                return net(x_in, t, c)
            rows = torch.arange(blocks, device=x_in.device) * batch
            x_in, c = x_in.index_select(0, rows), _select(c, rows, n)
            t = t.index_select(0, rows.to(t.device)) if t.dim() > 0 and t.shape[0] == n else t
        key = digest(state, x_in, t, *_tensors(c))
        self.rows_asked += n
        out = self._cache.get(key)
        if out is None:
            out = net(x_in, t, c)
            self.rows_run += out.shape[0]
            self._cache[key] = out
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
            out = out.clone()  # the sampler owns what it gets
        return out if rows is None else out.repeat_interleave(batch, dim=0)
