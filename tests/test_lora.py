"""LoRA-family adapters: merged weights equal the reference formulas; unloading is exact."""
import pytest
import torch
from safetensors.torch import save_file

from brushwork.lora import LoraError, LoraStack, module_table

G = torch.Generator().manual_seed(0)


def rnd(*shape):
    return torch.randn(*shape, generator=G) * 0.1


@pytest.fixture
def sd1(engines):
    eng = engines("sd1")
    m = eng.model
    stack = LoraStack()
    yield m, stack
    stack.restore()


def write(tmp_path, tensors, metadata=None, name="l.safetensors"):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def layer(m, name):
    return dict(m.networks.unet.named_modules())[name]


def apply(m, stack, path, te=1.0, unet=1.0):
    return stack.apply(m.spec, m.networks.unet, m.networks.text_encoders, path, te, unet)


def test_lora_on_a_linear_layer_and_exact_unload(sd1, tmp_path):
    m, stack = sd1
    mod = layer(m, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    before = mod.weight.detach().clone()
    down, up = rnd(4, 32), rnd(32, 4)
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    path = write(tmp_path, {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(2.0)})
    assert apply(m, stack, path, unet=0.8) == 1
    expected = before + (up @ down) * (2.0 / 4) * 0.8
    assert torch.allclose(mod.weight, expected, atol=1e-6)
    stack.restore()
    assert torch.equal(mod.weight, before)


def test_locon_on_a_conv_layer_in_original_layout_names(sd1, tmp_path):
    m, stack = sd1
    mod = layer(m, "down_blocks.0.resnets.0.conv1")  # original layout: input_blocks.1.0.in_layers.2
    before = mod.weight.detach().clone()
    down, up = rnd(3, 32, 3, 3), rnd(32, 3, 1, 1)
    key = "lora_unet_input_blocks_1_0_in_layers_2"
    apply(m, stack, write(tmp_path, {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up}))
    expected = before + (up.flatten(1) @ down.flatten(1)).reshape(32, 32, 3, 3)
    assert torch.allclose(mod.weight, expected, atol=1e-6)


def test_loha(sd1, tmp_path):
    m, stack = sd1
    mod = layer(m, "down_blocks.0.attentions.0.proj_in")  # SD1: a 1x1 conv (32, 32, 1, 1)
    before = mod.weight.detach().clone()
    w1a, w1b, w2a, w2b = rnd(32, 4), rnd(4, 32), rnd(32, 4), rnd(4, 32)
    key = "lora_unet_down_blocks_0_attentions_0_proj_in"
    parts = {"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b, "alpha": torch.tensor(1.0)}
    apply(m, stack, write(tmp_path, {f"{key}.{k}": v for k, v in parts.items()}))
    expected = before + ((w1a @ w1b) * (w2a @ w2b)).reshape(32, 32, 1, 1) * (1.0 / 4)
    assert torch.allclose(mod.weight, expected, atol=1e-6)


def test_lokr(sd1, tmp_path):
    m, stack = sd1
    mod = layer(m, "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2")  # Linear(128 -> 32)
    before = mod.weight.detach().clone()
    w1, w2a, w2b = rnd(4, 8), rnd(8, 2), rnd(2, 16)
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2"
    apply(m, stack, write(tmp_path, {f"{key}.lokr_w1": w1, f"{key}.lokr_w2_a": w2a, f"{key}.lokr_w2_b": w2b, f"{key}.alpha": torch.tensor(1.0)}))
    expected = before + torch.kron(w1, w2a @ w2b) * (1.0 / 2)
    assert torch.allclose(mod.weight, expected, atol=1e-6)


def test_text_encoder_and_peft_names_with_separate_multipliers(sd1, tmp_path):
    m, stack = sd1
    te = m.networks.text_encoders[0]
    q = dict(te.named_modules())["encoder.layers.0.self_attn.q_proj"]
    conv_out = m.networks.unet.conv_out
    q0, c0 = q.weight.detach().clone(), conv_out.weight.detach().clone()
    a, b = rnd(2, 32), rnd(32, 2)
    ca, cb = rnd(2, 32, 3, 3), rnd(4, 2, 1, 1)
    path = write(tmp_path, {
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": a,
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": b,
        "unet.conv_out.lora_A.weight": ca,
        "unet.conv_out.lora_B.weight": cb,
    })
    assert apply(m, stack, path, te=0.5, unet=2.0) == 2
    assert torch.allclose(q.weight, q0 + (b @ a) * 0.5, atol=1e-6)
    assert torch.allclose(conv_out.weight, c0 + (cb.flatten(1) @ ca.flatten(1)).reshape(4, 32, 3, 3) * 2.0, atol=1e-6)


def test_two_loras_stack_and_unload_together(sd1, tmp_path):
    m, stack = sd1
    mod = layer(m, "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k")
    before = mod.weight.detach().clone()
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    d1, u1, d2, u2 = rnd(2, 32), rnd(32, 2), rnd(2, 32), rnd(32, 2)
    apply(m, stack, write(tmp_path, {f"{key}.lora_down.weight": d1, f"{key}.lora_up.weight": u1}, name="a.safetensors"))
    apply(m, stack, write(tmp_path, {f"{key}.lora_down.weight": d2, f"{key}.lora_up.weight": u2}, name="b.safetensors"), unet=0.5)
    assert torch.allclose(mod.weight, before + u1 @ d1 + 0.5 * (u2 @ d2), atol=1e-6)
    stack.restore()
    assert torch.equal(mod.weight, before)


def test_sdxl_layout_lora_applies_to_the_tiny_sdxl(engines, tmp_path):
    m = engines("sdxl").model
    stack = LoraStack()
    table = module_table(m.spec, m.networks.unet, m.networks.text_encoders)
    keys = ["lora_te1_text_model_encoder_layers_0_self_attn_k_proj", "lora_te2_text_model_encoder_layers_1_mlp_fc1", "lora_unet_input_blocks_3_1_proj_in"]  # tiny layout: level 1 attention
    assert all(k in table for k in keys)
    tensors = {}
    for k in keys:
        w = table[k][0].weight
        tensors[f"{k}.lora_down.weight"] = rnd(2, w.shape[1])
        tensors[f"{k}.lora_up.weight"] = rnd(w.shape[0], 2)
    originals = [table[k][0].weight.detach().clone() for k in keys]
    try:
        assert stack.apply(m.spec, m.networks.unet, m.networks.text_encoders, write(tmp_path, tensors, {"ss_base_model_version": "sdxl_base_v1-0"})) == 3
        assert all(not torch.equal(table[k][0].weight, o) for k, o in zip(keys, originals))
    finally:
        stack.restore()
    assert all(torch.equal(table[k][0].weight, o) for k, o in zip(keys, originals))


def test_lora_for_another_family_is_refused(sd1, tmp_path):
    m, stack = sd1
    key = "lora_unet_down_blocks_0_attentions_0_proj_in"
    path = write(tmp_path, {f"{key}.lora_down.weight": rnd(2, 32, 1, 1), f"{key}.lora_up.weight": rnd(32, 2, 1, 1)}, {"ss_base_model_version": "sdxl_base_v1-0"})
    with pytest.raises(LoraError, match="trained for SDXL, but the loaded checkpoint is SD 1.x"):
        apply(m, stack, path)
    wrong = write(tmp_path, {"lora_unet_no_such_layer.lora_down.weight": rnd(2, 8), "lora_unet_no_such_layer.lora_up.weight": rnd(8, 2)}, name="w.safetensors")
    with pytest.raises(LoraError, match="none of the 1 layers"):
        apply(m, stack, wrong)
    bad_shape = write(tmp_path, {f"{key}.lora_down.weight": rnd(2, 64, 1, 1), f"{key}.lora_up.weight": rnd(32, 2, 1, 1)}, name="s.safetensors")
    with pytest.raises(LoraError, match="does not fit a layer"):
        apply(m, stack, bad_shape)
    assert not stack.backups or stack.restore() is None


def test_not_a_lora_file(sd1, tmp_path):
    m, stack = sd1
    with pytest.raises(LoraError, match="contains no LoRA"):
        apply(m, stack, write(tmp_path, {"weight": rnd(3, 3)}))


def test_a_pt_lora_loads_through_the_safe_unpickler(sd1, tmp_path):
    m, stack = sd1
    mod = layer(m, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    before = mod.weight.detach().clone()
    down, up = rnd(4, 32), rnd(32, 4)
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    path = tmp_path / "old_style.pt"
    torch.save({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(4.0)}, path)
    assert apply(m, stack, path) == 1
    assert torch.allclose(mod.weight, before + up @ down, atol=1e-6)
    stack.restore()
    assert torch.equal(mod.weight, before)
