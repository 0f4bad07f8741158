"""Flux LoRAs in the layouts people share (kohya, ComfyUI, diffusers/PEFT/ai-toolkit, XLabs),
merged into a tiny Flux transformer and taken off again exactly."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from brushwork.lora import LoraError, LoraStack
from brushwork.models.flux import bfl_state, flux_sources

from test_flux_model import spec_of, tiny_transformer

H, MLP = 64, 256  # the tiny transformer's width and MLP width


def rnd(*shape, seed=[0]):
    seed[0] += 1
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed[0])) * 0.05


def write(tmp_path, tensors, name="flux-lora.safetensors", base="flux1"):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"ss_base_model_version": base} if base else None)
    return path


def expected_after(model, spec, fused_updates: dict[str, torch.Tensor]):
    """The reference: each update added to the file's (fused) tensor, then the whole
    state read through the loader's key map, as if the LoRA had been baked into the file."""
    stored = bfl_state(spec, model.state_dict())
    for key, delta in fused_updates.items():
        stored[key] = stored[key] + delta
    out = {}
    for name, src in flux_sources(spec).items():
        t = stored[src.key]
        out[name] = src.transform(t) if src.transform is not None else t
    return out


@pytest.fixture()
def model():
    return tiny_transformer(True)


def check_merge_and_restore(model, path, expected, mult=1.0):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stack = LoraStack()
    n = stack.apply(spec_of(), model, [], path, unet_mult=mult)
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {k for k in expected if not torch.equal(expected[k], before[k])} and changed
    for k in changed:
        assert torch.allclose(after[k], expected[k], atol=1e-6), k
    stack.restore()
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)
    return n


def test_kohya_names_the_fused_layers_and_the_update_is_split_by_rows(tmp_path, model):
    r = 4
    parts = {
        "double_blocks.0.img_attn.qkv": (3 * H, H),
        "single_blocks.1.linear1": (3 * H + MLP, H),
        "double_blocks.1.txt_mlp.0": (4 * H, H),
        "double_blocks.0.img_mod.lin": (6 * H, H),
    }
    tensors, updates = {}, {}
    for module, (rows, cols) in parts.items():
        key = "lora_unet_" + module.replace(".", "_")
        down, up = rnd(r, cols), rnd(rows, r)
        tensors.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(2.0)})
        updates[module + ".weight"] = (up @ down) * (2.0 / r) * 0.8
    n = check_merge_and_restore(model, write(tmp_path, tensors), expected_after(model, spec_of(), updates), mult=0.8)
    assert n == 3 + 4 + 1 + 1  # layers of the network changed: q, k, v; q, k, v, mlp; one; one


def test_diffusers_peft_and_comfyui_layouts(tmp_path, model):
    q_down, q_up = rnd(2, H), rnd(H, 2)
    l2_down, l2_up = rnd(2, H + MLP), rnd(H, 2)
    tensors = {
        "transformer.transformer_blocks.1.attn.to_q.lora_A.weight": q_down, "transformer.transformer_blocks.1.attn.to_q.lora_B.weight": q_up,
        "diffusion_model.single_blocks.0.linear2.lora_A.weight": l2_down, "diffusion_model.single_blocks.0.linear2.lora_B.weight": l2_up,
    }
    pad = torch.zeros(2 * H, H)  # to_q is the first third of the fused q/k/v
    updates = {"double_blocks.1.img_attn.qkv.weight": torch.cat([q_up @ q_down, pad]), "single_blocks.0.linear2.weight": l2_up @ l2_down}
    assert check_merge_and_restore(model, write(tmp_path, tensors, base=None), expected_after(model, spec_of(), updates)) == 2


def test_xlabs_layout_adapts_the_double_blocks_attention(tmp_path, model):
    tensors, updates = {}, {}
    for xlabs, module, rows in (("qkv_lora2", "txt_attn.qkv", 3 * H), ("proj_lora1", "img_attn.proj", H)):
        down, up = rnd(4, H), rnd(rows, 4)
        tensors.update({f"double_blocks.1.processor.{xlabs}.down.weight": down, f"double_blocks.1.processor.{xlabs}.up.weight": up})
        updates[f"double_blocks.1.{module}.weight"] = up @ down  # no alpha: scale 1
    assert check_merge_and_restore(model, write(tmp_path, tensors, base=None), expected_after(model, spec_of(), updates)) == 3 + 1


def test_a_flux_lora_on_another_family_and_a_wrong_shape_are_refused(tmp_path, model, engines):
    key = "lora_unet_double_blocks_0_img_attn_qkv"
    good = write(tmp_path, {f"{key}.lora_down.weight": rnd(2, H), f"{key}.lora_up.weight": rnd(3 * H, 2)})
    m = engines("sd1").model
    with pytest.raises(LoraError, match="trained for Flux.1, but the loaded checkpoint is SD 1.x"):
        LoraStack().apply(m.spec, m.networks.unet, m.networks.text_encoders, good)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wrong = write(tmp_path, {f"{key}.lora_down.weight": rnd(2, H), f"{key}.lora_up.weight": rnd(2 * H, 2)}, name="wrong.safetensors")
    with pytest.raises(LoraError, match=r"layer lora_unet_double_blocks_0_img_attn_qkv: an update of shape \(128, 64\) does not fit a layer of shape \(192, 64\)"):
        LoraStack().apply(spec_of(), model, [], wrong)
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)
