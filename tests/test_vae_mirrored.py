"""The mirrored-halves decode (vae.decode_mirrored_halves) and which checkpoints use it."""
from __future__ import annotations

import json

import pytest
import torch

from brushwork.catalog import PACKAGED_DEMO, inspect_checkpoint
from brushwork.models.detect import _metadata_vae_decode
from brushwork.vae import MIRROR_RAMP, decode_mirrored_halves, mirrored_halves


def test_the_left_comes_from_the_mirrored_decode_the_right_from_the_plain_one_with_a_ramp_between():
    plain, mirrored = torch.zeros(1, 3, 4, 64), torch.ones(1, 3, 4, 64)
    row = mirrored_halves(plain, mirrored)[0, 0, 0]
    left, right = (64 - MIRROR_RAMP) // 2, (64 + MIRROR_RAMP) // 2
    assert torch.all(row[:left] == 1) and torch.all(row[right:] == 0)
    ramp = row[left:right]
    assert torch.all(ramp[1:] < ramp[:-1])  # falls steadily from the mirrored to the plain decode
    assert float(row[31] + row[32]) == pytest.approx(1.0, abs=1 / MIRROR_RAMP)


def test_a_flaw_drawn_at_one_place_of_the_decoders_frame_is_gone_and_the_content_is_kept():
    def flawed_decoder(z):  # an exact decoder (2x nearest upsampling) that adds a spot at the frame's lower left
        out = z.repeat_interleave(2, -1).repeat_interleave(2, -2).clone()
        out[..., -6:-2, 2:8] += 0.5
        return out

    z = torch.rand(1, 3, 16, 32, generator=torch.Generator().manual_seed(0))
    truth = z.repeat_interleave(2, -1).repeat_interleave(2, -2)
    plain = flawed_decoder(z)
    assert (plain - truth).abs().max() == pytest.approx(0.5)
    fixed = decode_mirrored_halves(flawed_decoder, z)
    assert fixed.shape == truth.shape
    assert torch.allclose(fixed, truth, atol=1e-6)


@pytest.mark.parametrize("metadata, expected", [
    ({}, "plain"),
    ({"brushwork.vae_decode": "mirrored-halves"}, "mirrored-halves"),
    ({"brushwork.vae_decode": "plain", "brushwork.training": json.dumps({"config": {"vae_steps": 3000}})}, "plain"),
    ({"brushwork.vae_decode": "sideways"}, "plain"),  # unknown: decoded plainly
    ({"brushwork.training": json.dumps({"config": {"vae_steps": 3000, "unet_steps": 3000}})}, "mirrored-halves"),  # the demo trainer's record
    ({"brushwork.training": json.dumps({"config": {"vae_steps": 3000}, "decoder_refine": {"steps": 240}})}, "plain"),
    ({"brushwork.training": json.dumps({"rank": 8, "steps": 100})}, "plain"),  # a LoRA training's record
    ({"brushwork.training": "{not json"}, "plain"),
])
def test_which_files_decode_as_mirrored_halves(metadata, expected):
    assert _metadata_vae_decode(metadata) == expected


@pytest.mark.skipif(not PACKAGED_DEMO.is_file(), reason="the demo model is not built")
def test_the_shipped_demo_decodes_as_mirrored_halves():
    assert inspect_checkpoint(PACKAGED_DEMO).vae_decode == "mirrored-halves"
