"""SharedCalls: a comparison's first network calls in common run once, and nothing else is shared."""
from __future__ import annotations

import torch

from brushwork.sampling.shared_calls import SharedCalls


class CountingNet:
    """A network stand-in: output depends on every row's latents, timestep and conditioning."""

    def __init__(self):
        self.rows = []

    def __call__(self, x, t, c):
        self.rows.append(x.shape[0])
        return x * 2 + t.reshape(-1, 1, 1, 1) * 0 + c["context"].mean(dim=(1, 2)).reshape(-1, 1, 1, 1)


def call_inputs(batch: int, same_rows: bool, seed: int = 0, texts: int = 2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1 if same_rows else batch, 4, 8, 8, generator=g).expand(batch, -1, -1, -1)
    text = torch.randn(texts, 3, 5, generator=g)
    x_in = torch.cat([x] * texts)
    c = {"context": text.repeat_interleave(batch, dim=0), "added": {"time_ids": torch.ones(1, 6)}}
    return x_in, torch.tensor(999.0), c


def test_a_batch_of_equal_images_runs_one_row_per_text_and_gives_every_image_the_full_answer():
    net, shared = CountingNet(), SharedCalls()
    x_in, t, c = call_inputs(batch=4, same_rows=True)
    out = shared.wrap(net, 4, "model-a")(x_in, t, c)
    assert net.rows == [2]  # negative and positive text, one image
    assert torch.equal(out, net(x_in, t, c))  # what the full batch would have given
    assert (shared.rows_asked, shared.rows_run, shared.rows_saved) == (8, 2, 6)


def test_a_later_batch_with_the_same_first_call_reuses_it_and_only_the_first_call_is_looked_at():
    net, shared = CountingNet(), SharedCalls()
    x_in, t, c = call_inputs(batch=3, same_rows=True)
    first = shared.wrap(net, 3, "model-a")
    a = first(x_in, t, c)
    second = shared.wrap(net, 3, "model-a")
    b = second(x_in, t, c)
    assert torch.equal(a, b) and net.rows == [2]
    b.add_(1)  # the sampler owns what it gets: the stored answer is untouched
    assert torch.equal(shared.wrap(net, 3, "model-a")(x_in, t, c), a)
    second(x_in, t, c)  # a second call of the same run is never shared
    assert net.rows == [2, 6]


def test_nothing_is_shared_across_other_weights_latents_timesteps_or_texts():
    net, shared = CountingNet(), SharedCalls()
    x_in, t, c = call_inputs(batch=2, same_rows=True)
    shared.wrap(net, 2, "model-a")(x_in, t, c)
    shared.wrap(net, 2, "model-a+lora:0.5")(x_in, t, c)  # a LoRA merged: other weights
    shared.wrap(net, 2, "model-a")(x_in, torch.tensor(998.0), c)
    other_seed, _, _ = call_inputs(batch=2, same_rows=True, seed=1)
    shared.wrap(net, 2, "model-a")(other_seed, t, c)
    _, _, other_text = call_inputs(batch=2, same_rows=True, seed=2)
    shared.wrap(net, 2, "model-a")(x_in, t, other_text)
    assert net.rows == [2, 2, 2, 2, 2]


def test_a_batch_of_different_images_runs_whole():
    net, shared = CountingNet(), SharedCalls()
    x_in, t, c = call_inputs(batch=3, same_rows=False)
    out = shared.wrap(net, 3, "model-a")(x_in, t, c)
    assert net.rows == [6] and torch.equal(out, net(x_in, t, c))
    assert shared.rows_saved == 0


def test_the_store_keeps_only_the_latest_entries():
    net, shared = CountingNet(), SharedCalls(max_entries=2)
    inputs = [call_inputs(batch=1, same_rows=True, seed=s) for s in range(3)]
    for x_in, t, c in inputs:
        shared.wrap(net, 1, "m")(x_in, t, c)
    shared.wrap(net, 1, "m")(*inputs[0])  # the oldest was dropped: runs again
    shared.wrap(net, 1, "m")(*inputs[2])  # still kept
    assert net.rows == [2, 2, 2, 2]
