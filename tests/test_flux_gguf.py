"""GGUF-quantized Flux transformers (as city96's files are: BFL key names, quantized linear
weights, float biases and norms), written with the gguf package's own writer."""
from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from brushwork.models.errors import CorruptCheckpoint  # noqa: E402
from brushwork.models.files import open_tensor_file  # noqa: E402
from brushwork.models.flux import bfl_state, build_flux_transformer, detect_flux  # noqa: E402
from brushwork.sampling import flow  # noqa: E402

from test_flux_model import inputs, spec_of, tiny_transformer  # noqa: E402

Q = gguf.GGMLQuantizationType


def k_quant_rows(values: np.ndarray, qtype) -> np.ndarray:
    """Bytes of a K-quant type for a (rows, cols) weight: the gguf package can read K-quants
    but not write them, so the blocks hold random codes under sane fp16 scales (d, dmin
    first in each Q4_K / Q5_K block; Q6_K keeps its fp16 d last)."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = values.shape
    rng = np.random.default_rng(rows * 7 + cols)
    raw = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    scales = np.array([2e-4, 1e-4], dtype=np.float16).view(np.uint8)
    if qtype == Q.Q6_K:
        raw[..., -2:] = scales[:2]
    else:
        raw[..., :4] = scales
    return raw.reshape(rows, -1)


def write_gguf(path, model, qtype, spec) -> dict[str, np.ndarray]:
    """The transformer as a GGUF file: 2-D weights quantized, the rest float32 (the
    expected dequantized weights are returned, per BFL key)."""
    writer = gguf.GGUFWriter(str(path), "flux")
    expected = {}
    for key, t in bfl_state(spec, model.state_dict()).items():
        a = t.numpy().astype(np.float32)
        if a.ndim == 2 and a.shape[1] % 256 == 0 or (a.ndim == 2 and qtype in (Q.Q8_0, Q.Q4_0, Q.Q5_0) and a.shape[1] % 32 == 0):
            raw = gguf.quants.quantize(a, qtype) if qtype in (Q.Q8_0, Q.Q4_0, Q.Q5_0) else k_quant_rows(a, qtype)
            writer.add_tensor(key, raw, raw_dtype=qtype)
            expected[key] = gguf.quants.dequantize(raw, qtype)
        else:
            writer.add_tensor(key, a)
            expected[key] = a
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


HEADS = 8  # 256 wide: the K-quants' blocks are 256 numbers of a row


@pytest.fixture(scope="module")
def dev():
    return tiny_transformer(True, heads=HEADS)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q5_0, Q.Q4_0, Q.Q4_K, Q.Q5_K, Q.Q6_K])
def test_a_gguf_transformer_runs_its_layers_dequantized_one_at_a_time(tmp_path, dev, qtype):
    path = tmp_path / f"flux1-dev-{qtype.name}.gguf"
    expected = write_gguf(path, dev, qtype, spec_of(heads=HEADS))
    tf = open_tensor_file(path)
    try:
        spec = detect_flux(tf.shapes())
        assert spec == spec_of(heads=HEADS)
        assert {tf.tensors[k].dtype for k in tf.quantized} == {qtype.name}
        net = build_flux_transformer(spec, tf, torch.float32, torch.device("cpu"))
        quantized = set(tf.quantized)
    finally:
        tf.close()
    assert "double_blocks.0.img_attn.qkv.weight" in quantized and "single_blocks.1.linear1.weight" in quantized
    # the quantized weights hold no float memory: one expanded zero each
    qkv = net.transformer_blocks[0].attn.to_q.weight
    assert qkv.shape == (256, 256) and qkv.stride() == (0, 0)
    # the same network with the dequantized weights put in whole, as the reference
    reference = tiny_transformer(True, heads=HEADS)
    ref_state = {}
    from brushwork.models.flux import flux_sources

    for name, src in flux_sources(spec).items():
        t = torch.from_numpy(np.ascontiguousarray(expected[src.key], dtype=np.float32))
        ref_state[name] = src.transform(t) if src.transform is not None else t
    reference.load_state_dict(ref_state)
    x, text = inputs()
    ours = flow.FlowDenoiser(net, text, 8, 8, guidance=3.5)(x, torch.tensor(0.6))
    theirs = flow.FlowDenoiser(reference, text, 8, 8, guidance=3.5)(x, torch.tensor(0.6))
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5)
    assert net.transformer_blocks[0].attn.to_q.weight.stride() == (0, 0)  # dropped again after the call
    if qtype == Q.Q8_0:  # a real quantization of the float weights: close to them
        exact = flow.FlowDenoiser(dev, text, 8, 8, guidance=3.5)(x, torch.tensor(0.6))
        assert (ours - exact).abs().max().item() < 0.05 * exact.abs().max().item()


def test_a_damaged_gguf_file_is_named(tmp_path):
    bad = tmp_path / "flux1-dev-Q4_K_S.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 7)
    with pytest.raises(CorruptCheckpoint, match="flux1-dev-Q4_K_S.gguf is not a readable GGUF file"):
        open_tensor_file(bad)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0])
def test_the_torch_dequantizers_equal_the_gguf_package(qtype):
    from brushwork.models.gguf_file import TORCH_TYPES, Quantized

    values = np.random.default_rng(3).standard_normal((6, 96)).astype(np.float32)
    raw = gguf.quants.quantize(values, qtype)
    ours = Quantized(int(qtype), torch.from_numpy(raw), (6, 96)).dequantize()
    assert qtype.name in TORCH_TYPES
    assert torch.equal(ours, torch.from_numpy(gguf.quants.dequantize(raw, qtype)))
    assert (ours - torch.from_numpy(values)).abs().max() < (0.02 if qtype == Q.Q8_0 else 0.4)
