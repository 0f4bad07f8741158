"""Where the noise comes from: seeds -> starting noise and step noise, as AUTOMATIC1111 makes them.

Every image of a batch has its own generator, seeded with its own seed, so a
picture never depends on the batch it was made in.  The *source* of those
generators is AUTOMATIC1111's ``randn_source`` setting (infotext key ``RNG``):

* ``CPU``: torch's CPU generator (Mersenne Twister).  The same numbers on every
  machine; Brushwork's default.
* ``GPU``: torch's CUDA generator.  On a CUDA device Brushwork draws with torch
  on that device; anywhere else it uses the NV emulation below, which gives the
  numbers an NVIDIA GPU gives (to float32 rounding, see docs/seeds.md).  This is
  A1111's default, so an infotext without ``RNG`` means GPU.
* ``NV``: AUTOMATIC1111's CPU emulation of the CUDA generator, bit for bit.

The CUDA generator, as torch uses it for ``randn`` in float32, is
Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
SC 2011) followed by curand's Box-Muller transform:

* torch's generator holds a 64-bit seed and an offset; each kernel launch takes
  the current offset and moves it on by 4 per Philox block a thread uses.
* The thread for element ``i`` starts curand at ``(seed, subsequence=i,
  offset)``: the Philox key is the seed's two 32-bit halves (low first), the
  counter is ``(offset/4 as 64 bits, i as 64 bits)``, low word first.
* One Philox call gives four words ``x, y, z, w``; Box-Muller turns ``(x, y)``
  into ``sqrt(-2 ln u) * (sin v, cos v)`` with ``u = x/2^32 + 2^-33`` and
  ``v = 2pi (y/2^32 + 2^-33)``, and ``(z, w)`` likewise.  As long as a tensor
  fits in one pass of the threads the GPU runs at once, element ``i`` is the
  sine of its own ``(x, y)`` pair, and the offset moves on by one block per call.
  Larger tensors wrap around the threads and use all four outputs; how soon that
  happens depends on the GPU model (:func:`cuda_threads`).

Step noise of ancestral and SDE samplers comes from the same per-image
generators, which keep going after the starting noise; with ENSD (A1111's "Eta
noise seed delta") they are re-seeded with ``seed + ENSD`` once the starting
noise is drawn.  The DPM++ SDE family instead uses Brownian-tree noise
(:class:`BrownianNoise`), one tree per image seed.

Variation seeds (A1111's subseed and "Variation strength") and "Seed resize from"
change only the starting noise (:func:`variation_noise`, :func:`slerp`,
:func:`batch_seeds`); the step noise still comes from the image seeds' generators.
"""
from __future__ import annotations

import logging
import math
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Protocol, Sequence, Union

import numpy as np
import torch

from .infotext import RNG_SOURCES

__all__ = [
    "RNG_SOURCES",
    "BrownianNoise",
    "PhiloxGenerator",
    "TorchGenerator",
    "VARIATION_LINEAR_ABOVE",
    "batch_seeds",
    "box_muller",
    "cuda_threads",
    "gpu_is_emulated",
    "initial_noise",
    "make_generator",
    "noise_source",
    "philox4x32",
    "philox_randn",
    "randn_local",
    "resized_noise_shape",
    "slerp",
    "variation_noise",
]

log = logging.getLogger(__name__)

# ----------------------------------------------------------------- Philox4x32-10
# Salmon et al. 2011, section 4: two 32x32->64 multiplications per round with the
# multipliers M, the key bumped by the Weyl constants W (golden ratio, sqrt(3) - 1)
# between rounds.

PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
_LOW32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)


def philox4x32(counter: Sequence, key: Sequence, rounds: int = 10) -> np.ndarray:
    """Philox4x32 with ``rounds`` rounds: four counter words and two key words
    (each a number or an array; arrays broadcast) -> a (4, ...) uint32 array.

    One round maps (c0, c1, c2, c3) with key (k0, k1) to
    (hi(M1*c2) ^ c1 ^ k0, lo(M1*c2), hi(M0*c0) ^ c3 ^ k1, lo(M0*c0)),
    where hi/lo are the upper and lower 32 bits of the 64-bit product."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) for c in counter)
    k0, k1 = (np.asarray(k, dtype=np.uint64) for k in key)
    m0, m1 = np.uint64(PHILOX_M[0]), np.uint64(PHILOX_M[1])
    w0, w1 = np.uint64(PHILOX_W[0]), np.uint64(PHILOX_W[1])
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + w0) & _LOW32, (k1 + w1) & _LOW32
        prod0, prod1 = c0 * m0, c2 * m1  # both factors < 2**32: exact in 64 bits
        c0, c1, c2, c3 = (prod1 >> _SHIFT32) ^ c1 ^ k0, prod1 & _LOW32, (prod0 >> _SHIFT32) ^ c3 ^ k1, prod0 & _LOW32
    return np.stack(np.broadcast_arrays(c0, c1, c2, c3)).astype(np.uint32)


# ----------------------------------------------------------------- Box-Muller
# curand's constants are float32: 2**-32 (written 2.3283064e-10f) and
# 2pi (6.2831855f); their product is exactly float32(2pi) * 2**-32.
_INV_2POW32 = float(np.float32(2.3283064e-10))  # == 2**-32 exactly
_INV_2POW32_2PI = float(np.float32(6.2831855)) * _INV_2POW32


def _polar(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Box-Muller's radius sqrt(-2 ln u) and angle v for the words (x, y)."""
    u = x.astype(np.float64) * _INV_2POW32 + _INV_2POW32 / 2
    v = y.astype(np.float64) * _INV_2POW32_2PI + _INV_2POW32_2PI / 2
    return np.sqrt(-2.0 * np.log(u)), v


def box_muller(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two normals curand makes from the words (x, y), as float64 before the
    final cast: sqrt(-2 ln u) * (sin v, cos v).

    The arithmetic is AUTOMATIC1111's emulation's (numpy float64 on the float32
    constants, then rounded to float32 once), so the NV numbers are its numbers.
    The GPU itself works in float32 (logf, and the fast intrinsic __sincosf); the
    two agree to a few float32 units in the last place."""
    radius, angle = _polar(x, y)
    return radius * np.sin(angle), radius * np.cos(angle)


# ----------------------------------------------------------------- torch's CUDA randn

BLOCK_SIZE = 256  # threads per block of torch's distribution kernels


def cuda_threads(numel: int, sm_count: int, max_threads_per_sm: int) -> int:
    """How many threads torch launches for a random tensor of ``numel`` elements
    on a GPU with ``sm_count`` multiprocessors of ``max_threads_per_sm`` threads:
    enough 256-thread blocks to cover the tensor, at most as many as fit at once."""
    blocks = (numel + BLOCK_SIZE - 1) // BLOCK_SIZE
    return BLOCK_SIZE * max(1, min(blocks, sm_count * (max_threads_per_sm // BLOCK_SIZE)))


def philox_randn(seed: int, offset: int, numel: int, threads: Optional[int] = None) -> tuple[np.ndarray, int]:
    """``numel`` standard normals as torch's CUDA ``randn`` makes them in float32,
    for a generator with ``seed`` whose offset is ``offset`` Philox blocks (torch's
    own offset is four times that).  Returns (float32 values, blocks used), the
    second being how far the offset moves on.

    ``threads`` is the number of threads the GPU runs (:func:`cuda_threads`);
    None means "at least ``numel``", which is AUTOMATIC1111's NV emulation: one
    Philox block per element, the offset moving on by one per call.  With fewer
    threads than elements, thread t makes four normals per block and block j of
    thread t is used for elements j*4T + k*T + t, k = 0..3 (sine and cosine of
    (x, y), then of (z, w))."""
    if not 0 <= seed < 2**64:
        raise ValueError(f"a Philox seed is a 64-bit unsigned number; got {seed}")
    if threads is None or threads >= numel:
        threads, passes = numel, 1  # one pass: element i is thread i's first normal
    else:
        passes = -(-numel // (4 * threads))
    block = np.arange(passes, dtype=np.uint64)[:, None] + np.uint64(offset)
    thread = np.arange(threads, dtype=np.uint64)[None, :]
    counter = (block & _LOW32, block >> _SHIFT32, thread & _LOW32, thread >> _SHIFT32)
    words = philox4x32(counter, (seed & 0xFFFFFFFF, seed >> 32))  # (4, passes, threads)
    if threads == numel:
        radius, angle = _polar(words[0, 0], words[1, 0])
        return (radius * np.sin(angle)).astype(np.float32), 1
    sin_xy, cos_xy = box_muller(words[0], words[1])
    sin_zw, cos_zw = box_muller(words[2], words[3])
    ordered = np.stack([sin_xy, cos_xy, sin_zw, cos_zw], axis=1)  # (passes, 4, threads)
    return ordered.reshape(-1)[:numel].astype(np.float32), passes


# ----------------------------------------------------------------- per-image generators


class NoiseGenerator(Protocol):
    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        """The next standard-normal float32 tensor of ``shape`` (on the generator's device)."""


class PhiloxGenerator:
    """torch's CUDA generator, emulated on the CPU: ``seed`` and an ``offset`` in
    Philox blocks that each draw moves on.

    ``gpu`` = (multiprocessors, threads per multiprocessor) of the GPU to imitate
    only matters for tensors larger than the threads it runs at once
    (:func:`cuda_threads`); None, "enough threads", is AUTOMATIC1111's NV generator."""

    def __init__(self, seed: int, offset: int = 0, gpu: Optional[tuple[int, int]] = None):
        self.seed = int(seed) % 2**64  # torch takes negative seeds modulo 2**64 too
        self.offset = offset
        self.gpu = gpu

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        shape = tuple(int(s) for s in shape)
        numel = math.prod(shape)
        threads = None if self.gpu is None else cuda_threads(numel, *self.gpu)
        values, used = philox_randn(self.seed, self.offset, numel, threads)
        self.offset += used
        return torch.from_numpy(values.reshape(shape))


class TorchGenerator:
    """A seeded ``torch.Generator`` on ``device``, drawing float32."""

    def __init__(self, seed: int, device: Union[str, torch.device] = "cpu"):
        self.device = torch.device(device)
        self.generator = torch.Generator(self.device).manual_seed(int(seed))

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.generator, device=self.device, dtype=torch.float32)


def gpu_is_emulated(device: Union[str, torch.device, None]) -> bool:
    """Whether the GPU source is drawn by the NV emulation on ``device`` (everything but CUDA)."""
    return torch.device(device or "cpu").type != "cuda"


def make_generator(source: str, seed: int, device: Union[str, torch.device, None] = None) -> NoiseGenerator:
    """A fresh generator for one image: ``source`` is CPU, GPU or NV (see the module doc)."""
    if source == "CPU":
        return TorchGenerator(seed, "cpu")
    if source == "GPU" and not gpu_is_emulated(device):
        return TorchGenerator(seed, torch.device(device))
    if source in ("GPU", "NV"):
        return PhiloxGenerator(seed)
    raise ValueError(f"unknown noise source {source!r}; expected one of {', '.join(RNG_SOURCES)}")


def randn_local(source: str, seed: int, shape: Sequence[int], device: Union[str, torch.device, None] = None) -> torch.Tensor:
    """The first draw of a fresh generator seeded with ``seed`` (A1111's randn_local)."""
    return make_generator(source, seed, device).randn(shape)


def initial_noise(seeds: list[int], shape: tuple[int, int, int], source: str = "CPU", ensd: int = 0, device: Union[str, torch.device, None] = None) -> tuple[torch.Tensor, list[NoiseGenerator]]:
    """Each image's starting noise (float32, stacked to (B, C, H, W) on ``device``,
    the CPU when None) and the generators its step noise comes from.

    As AUTOMATIC1111's ImageRNG: one generator per image seeded with its seed, the
    starting noise its first draw; step noise continues from there, unless ``ensd``
    is not 0, in which case the step-noise generators are fresh ones seeded with
    ``seed + ensd``.  The same seed and source give the same noise in any batch."""
    target = torch.device(device or "cpu")
    gens = [make_generator(source, seed, target) for seed in seeds]
    noise = torch.stack([g.randn(shape).to(target) for g in gens])
    if ensd:
        gens = [make_generator(source, seed + ensd, target) for seed in seeds]
    return noise, gens


# ----------------------------------------------------------------- variation seeds
# AUTOMATIC1111's ImageRNG.first with a subseed and/or "Seed resize from" (modules/rng.py):
# the seed's noise is interpolated towards the subseed's by slerp, at the old size when
# the seed is resized, and the result is pasted into the new size's noise.

VARIATION_LINEAR_ABOVE = 0.9995  # mean cosine above which A1111's slerp falls back to a linear mix
LATENT_FACTOR = 8  # pixels per latent cell, for "Seed resize from" given in pixels


def slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """AUTOMATIC1111's variation-seed interpolation of one image's noise ``low``
    (the seed's) towards ``high`` (the subseed's) by ``t`` (the variation strength).

    For an image tensor (C, H, W), as A1111 calls it:

    * both tensors are normalised along dim 1 (the latent's height), so each
      channel and column is a unit vector of H numbers;
    * ``dot`` is the sum over that dim of the product of the unit vectors, one
      cosine per (channel, column);
    * if the mean of all the cosines exceeds 0.9995 the result is the linear mix
      ``low * t + high * (1 - t)``: note the weights, the reverse of the branch
      below (A1111's quirk, kept; only near-parallel noises reach it);
    * otherwise, with ``omega = arccos(dot)``, the result is
      ``sin((1 - t) omega) / sin(omega) * low + sin(t omega) / sin(omega) * high``,
      the weights broadcast over the height.

    t = 1 gives ``high`` exactly and t = 0 gives ``low`` exactly (slerp branch).
    A 4-D tensor (B, C, H, W) is taken as a batch: each image along dim 0 is
    interpolated on its own, including its own choice of branch."""
    if low.shape != high.shape:
        raise ValueError(f"slerp needs two tensors of one shape; got {tuple(low.shape)} and {tuple(high.shape)}")
    if low.dim() == 4:
        return torch.stack([slerp(t, a, b) for a, b in zip(low, high)])
    if low.dim() < 2:
        raise ValueError(f"slerp works on one image's noise (C, H, W) or a batch (B, C, H, W); got shape {tuple(low.shape)}")
    cosine = ((low / low.norm(dim=1, keepdim=True)) * (high / high.norm(dim=1, keepdim=True))).sum(dim=1)
    if cosine.mean() > VARIATION_LINEAR_ABOVE:
        return low * t + high * (1 - t)
    omega = torch.acos(cosine)
    sin_omega = torch.sin(omega)
    weight_low = (torch.sin((1.0 - t) * omega) / sin_omega).unsqueeze(1)
    weight_high = (torch.sin(t * omega) / sin_omega).unsqueeze(1)
    return weight_low * low + weight_high * high


def resized_noise_shape(shape: Sequence[int], resize_from: Optional[tuple[int, int]]) -> tuple[int, ...]:
    """The latent shape (C, h, w) the seed's noise is drawn at for "Seed resize from"
    ``resize_from`` = (width, height) in pixels: (C, height // 8, width // 8); ``shape``
    itself when ``resize_from`` is None or either side is 0 or less (A1111's "off")."""
    shape = tuple(int(s) for s in shape)
    if resize_from is None:
        return shape
    width, height = (int(v) for v in resize_from)
    if width <= 0 or height <= 0:
        return shape
    return (shape[0], height // LATENT_FACTOR, width // LATENT_FACTOR)


def _centred_span(new: int, old: int) -> tuple[int, int, int]:
    """Along one axis, where old-size noise goes into new-size noise, as A1111 places
    it: (start in the new, start in the old, length).  The offset is
    floor((new - old) / 2); a larger old size is cropped by that much on each side,
    so an odd difference leaves the new noise's own last row/column uncovered, and a
    smaller old size sits one cell nearer the top/left when the difference is odd."""
    shift = (new - old) // 2
    if shift >= 0:
        return shift, 0, old
    return 0, -shift, old + 2 * shift


def _paste_centred(canvas: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
    """``canvas`` (C, H, W) with ``patch`` (C, h, w) pasted over its centre (in place)."""
    to_y, from_y, rows = _centred_span(canvas.shape[1], patch.shape[1])
    to_x, from_x, cols = _centred_span(canvas.shape[2], patch.shape[2])
    canvas[:, to_y:to_y + rows, to_x:to_x + cols] = patch[:, from_y:from_y + rows, from_x:from_x + cols]
    return canvas


def variation_noise(seeds: list[int], subseeds: Optional[list[int]], strength: float, shape: tuple[int, int, int], source: str = "CPU", ensd: int = 0, device: Union[str, torch.device, None] = None, resize_from: Optional[tuple[int, int]] = None) -> tuple[torch.Tensor, list[NoiseGenerator]]:
    """:func:`initial_noise` with AUTOMATIC1111's variation seeds and seed resize:
    the starting noise (B, C, H, W) float32 on ``device`` and the step-noise generators.

    For image i, as A1111's ImageRNG draws it:

    1. with a variation (``strength`` != 0 and ``subseeds`` given), the subseed's
       noise: the first draw of a fresh generator seeded ``subseeds[i]``, at the
       drawn shape (:func:`resized_noise_shape`);
    2. the seed's noise at the drawn shape: without a resize the first draw of the
       image's own generator (seeded ``seeds[i]``), as in :func:`initial_noise`;
       with one, the first draw of a fresh generator of the same seed;
    3. with a variation, ``slerp(strength, seed noise, subseed noise)``;
    4. with a resize, the image's own generator draws noise of ``shape`` and the
       result of 3 is pasted into its centre (cropped if the old size is larger;
       :func:`_centred_span` has A1111's offsets).

    Either way the image's generator has made exactly one draw of ``shape``, so the
    step noise carries on from where it would without variation or resize; the
    subseed's generators are thrown away.  ENSD then re-seeds the step-noise
    generators with ``seeds[i] + ensd``, the main seed, as in :func:`initial_noise`.

    Strength 0 without a resize gives :func:`initial_noise`'s noise and generators
    exactly; strength 1 gives the subseed's noise (resized like the seed's).
    The interpolation runs on ``device``, so CUDA and CPU results may differ by
    float32 rounding."""
    target = torch.device(device or "cpu")
    shape = tuple(int(s) for s in shape)
    drawn = resized_noise_shape(shape, resize_from)
    varied = subseeds is not None and strength != 0
    if varied and len(subseeds) != len(seeds):
        raise ValueError(f"one subseed per seed is needed; got {len(subseeds)} subseeds for {len(seeds)} seeds")
    gens = [make_generator(source, seed, target) for seed in seeds]
    images = []
    for i, (seed, gen) in enumerate(zip(seeds, gens)):
        towards = randn_local(source, subseeds[i], drawn, target).to(target) if varied else None
        if drawn == shape:
            image = gen.randn(shape).to(target)
        else:
            image = randn_local(source, seed, drawn, target).to(target)
        if towards is not None:
            image = slerp(strength, image, towards)
        if drawn != shape:
            image = _paste_centred(gen.randn(shape).to(target), image)
        images.append(image)
    noise = torch.stack(images)
    if ensd:
        gens = [make_generator(source, seed + ensd, target) for seed in seeds]
    return noise, gens


def batch_seeds(seed: Optional[int], subseed: Optional[int], strength: float, count: int, rng=None) -> tuple[list[int], list[int]]:
    """The seeds and subseeds of images 0 .. count - 1 of a request (all its batches
    together), as AUTOMATIC1111 numbers them: image i has seed + i when ``strength``
    is 0, and otherwise every image keeps ``seed``; the subseed is subseed + i either
    way (unused at strength 0).  -1 or None picks a random seed or subseed first, by
    the request's rule (:func:`brushwork.request.resolve_seed`; ``rng`` as there),
    the seed before the subseed."""
    from .request import resolve_seed  # request imports this module

    seed, subseed = resolve_seed(seed, rng), resolve_seed(subseed, rng)
    seeds = [seed + (0 if strength != 0 else i) for i in range(count)]
    return seeds, [subseed + i for i in range(count)]


def noise_source(gens: list[NoiseGenerator], shape: tuple[int, int, int], device: torch.device, dtype: torch.dtype) -> Callable[..., torch.Tensor]:
    """Per-step noise for ancestral samplers: the next draw of every image's
    generator, stacked to (B, C, H, W).  The step's sigmas are accepted (the
    samplers' noise contract) and ignored."""

    def draw(sigma=None, sigma_next=None) -> torch.Tensor:
        return torch.stack([g.randn(shape).to(device) for g in gens]).to(device, dtype)

    return draw


# ----------------------------------------------------------------- Brownian-tree noise
# AUTOMATIC1111 (and k-diffusion) give the DPM++ SDE family noise from a Brownian
# motion W over [sigma_min, sigma_max], one torchsde BrownianTree per image seed
# (entropy = the image's seed; ENSD does not apply).  torchsde draws the normals
# at the tree's nodes with a function of (shape, seed) in its brownian_interval
# module; A1111 replaces that function so the draws follow its noise source
# (randn_local), and so do we.  Our replacement hands over to torchsde's own
# function unless the calling thread is inside one of our trees, so other users
# of torchsde in the process are unaffected.

_tree_draws = threading.local()
TREE_TOLERANCE = 1e-6  # torchsde's default for BrownianTree, which A1111 keeps
TREE_DIGITS = 6  # the decimals torchsde rounds times to at that tolerance


def _hook_torchsde() -> bool:
    """Route torchsde's node draws through ``_tree_draws`` (once); False if this
    torchsde has no such function (the noise is then torchsde's own)."""
    from torchsde._brownian import brownian_interval as bi

    current = getattr(bi, "_randn", None)
    if current is None:
        return False
    if getattr(current, "brushwork_hook", False):
        return True

    def draw(size, dtype, device, seed):
        ours = getattr(_tree_draws, "draw", None)
        if ours is None:
            return current(size, dtype, device, seed)
        return ours(int(seed), tuple(size)).to(device=device, dtype=dtype)

    draw.brushwork_hook = True
    bi._randn = draw
    return True


@contextmanager
def _drawing(draw: Callable[[int, tuple], torch.Tensor]) -> Iterator[None]:
    previous = getattr(_tree_draws, "draw", None)
    _tree_draws.draw = draw
    try:
        yield
    finally:
        _tree_draws.draw = previous


def _as_float32(value) -> float:
    """A sigma as AUTOMATIC1111 holds it: a float32 tensor."""
    return float(torch.as_tensor(value, dtype=torch.float64).to(torch.float32))


class BrownianNoise:
    """Brownian-tree step noise for a batch: ``noise(sigma, sigma_next)`` returns
    (W_i(sigma_next) - W_i(sigma)) / sqrt|sigma_next - sigma| stacked over the images,
    a standard normal for every step, where W_i is image i's own Brownian motion
    over [sigma_min, sigma_max] of the run's (positive) sigmas.

    Each tree is a torchsde ``BrownianTree`` (tolerance 1e-6, as A1111 uses it)
    with the image's seed as entropy; its node values are drawn with ``source``
    like every other noise (:func:`randn_local`).  Image i's noise does not depend
    on the other images of the batch."""

    def __init__(self, seeds: Sequence[int], shape: tuple[int, int, int], sigmas: torch.Tensor, device: Union[str, torch.device, None] = None, dtype: torch.dtype = torch.float32, source: str = "CPU"):
        import torchsde

        if source not in RNG_SOURCES:
            raise ValueError(f"unknown noise source {source!r}; expected one of {', '.join(RNG_SOURCES)}")
        sigmas = torch.as_tensor(sigmas).detach().cpu()
        positive = sigmas[sigmas > 0]
        if positive.numel() == 0:
            raise ValueError("Brownian-tree noise needs at least one positive sigma")
        self.t_min, self.t_max = _as_float32(positive.min()), _as_float32(sigmas.max())
        self.device = torch.device(device or "cpu")
        self.dtype = dtype
        self.source = source
        self.seeds = [int(s) for s in seeds]
        if not _hook_torchsde():
            log.warning("this torchsde version draws its Brownian trees itself; DPM++ SDE noise will not match AUTOMATIC1111's")
        w0 = torch.zeros(shape, dtype=torch.float32, device=self.device)
        with self._drawing():
            self.trees = [torchsde.BrownianTree(self.t_min, w0, self.t_max, entropy=seed, tol=TREE_TOLERANCE) for seed in self.seeds]

    def _drawing(self):
        return _drawing(lambda seed, size: randn_local(self.source, seed, size, self.device))

    def increment(self, ta, tb) -> torch.Tensor:
        """W(tb) - W(ta) for every image, (B, C, H, W) float32, in either order of ta and tb."""
        a, b = _as_float32(ta), _as_float32(tb)
        # torchsde rounds times to its tolerance (6 decimals) and clamps them to the
        # tree's rounded ends, warning each time a float32 end lies just outside;
        # rounding first gives the same times without the warnings
        lo, hi = sorted((round(a, TREE_DIGITS), round(b, TREE_DIGITS)))
        with self._drawing():
            w = torch.stack([tree(lo, hi) for tree in self.trees])
        return w if b >= a else -w

    def __call__(self, sigma=None, sigma_next=None) -> torch.Tensor:
        if sigma is None or sigma_next is None:
            raise TypeError("Brownian-tree noise is drawn between two noise levels: call noise(sigma, sigma_next)")
        t0 = torch.tensor(_as_float32(sigma), dtype=torch.float32)
        t1 = torch.tensor(_as_float32(sigma_next), dtype=torch.float32)
        scale = (t1 - t0).abs().sqrt().to(self.device)
        return (self.increment(t0, t1) / scale).to(self.device, self.dtype)
