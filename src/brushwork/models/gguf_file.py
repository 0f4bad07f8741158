"""GGUF files (city96's quantized Flux transformers: Q8_0, Q5_K, Q4_K ...), read with the
``gguf`` package.

A GGUF tensor is stored row by row: each row of a weight is a run of quantized
blocks along its last dimension.  So taking rows of a quantized weight (one third of
a fused q/k/v, the halves of a modulation) is taking rows of its bytes, and the
loader's key map applies unchanged.  Quantized linear weights stay quantized in
memory and are dequantized one layer at a time while it runs
(:func:`keep_quantized`); float tensors (F32/F16/BF16: biases, norms, embeddings)
are read as plain tensors.

Dequantization is the ``gguf`` package's own (numpy, on the CPU), so every quant type
it knows is read exactly as llama.cpp defines it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .errors import CorruptCheckpoint, ModelFileError
from .files import TensorFile, TensorInfo

#: GGUF float types read as plain tensors
_FLOATS = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ModelFileError("reading .gguf files needs the gguf package: pip install gguf (or pip install -e \".[gguf]\")") from None
    return gguf


@dataclass(frozen=True)
class Quantized:
    """One quantized weight: its bytes as (rows, bytes per row) and its float shape."""

    qtype: int  # gguf.GGMLQuantizationType
    rows: torch.Tensor  # uint8
    shape: tuple[int, int]

    @property
    def type_name(self) -> str:
        return _gguf().GGMLQuantizationType(self.qtype).name

    def map_rows(self, transform: Optional[Callable[[torch.Tensor], torch.Tensor]]) -> "Quantized":
        """The weight with ``transform`` (a choice of rows) applied to its bytes."""
        if transform is None:
            return self
        rows = transform(self.rows)
        return replace(self, rows=rows, shape=(rows.shape[0], self.shape[1]))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight, on the device its bytes are on: in torch for the types
        :data:`TORCH_TYPES` covers (also on a GPU), else with the gguf package (numpy)."""
        gguf = _gguf()
        qtype = gguf.GGMLQuantizationType(self.qtype)
        if qtype.name in TORCH_TYPES:
            return TORCH_TYPES[qtype.name](self.rows, self.shape[1]).to(dtype)
        values = gguf.quants.dequantize(np.ascontiguousarray(self.rows.cpu().numpy()), qtype)
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(self.shape).to(device=self.rows.device, dtype=dtype)

    def stand_in(self, dtype: torch.dtype) -> torch.Tensor:
        """A tensor of the weight's shape that holds no memory (one zero, expanded)."""
        return torch.zeros((), dtype=dtype).expand(self.shape)


def _blocks(rows: torch.Tensor, cols: int, block: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scales (R, nb, 1) float32, the rest of each block (R, nb, size - 2) bytes) of a
    type whose blocks of ``block`` numbers start with an fp16 scale."""
    b = rows.reshape(rows.shape[0], cols // block, size)
    d = b[..., :2].contiguous().view(torch.float16).float()
    return d, b[..., 2:]


def dequantize_q8_0(rows: torch.Tensor, cols: int) -> torch.Tensor:
    """Q8_0: blocks of 32 numbers, an fp16 scale then 32 signed bytes; x = d * q."""
    d, q = _blocks(rows, cols, 32, 34)
    return (d * q.contiguous().view(torch.int8).float()).reshape(rows.shape[0], cols)


def dequantize_q4_0(rows: torch.Tensor, cols: int) -> torch.Tensor:
    """Q4_0: blocks of 32 numbers, an fp16 scale then 16 bytes whose low nibbles are
    numbers 0-15 and high nibbles 16-31; x = d * (nibble - 8)."""
    d, q = _blocks(rows, cols, 32, 18)
    low, high = (q & 0x0F).float() - 8, (q >> 4).float() - 8
    return (d * torch.cat([low, high], dim=-1)).reshape(rows.shape[0], cols)


#: quant types dequantized in torch (on the weight's device); the others go through gguf's numpy code
TORCH_TYPES = {"Q8_0": dequantize_q8_0, "Q4_0": dequantize_q4_0}


@dataclass
class GGUFFile(TensorFile):
    """A :class:`TensorFile` over a GGUF file; ``quantized`` holds its quantized tensors."""

    quantized: dict[str, Quantized] = field(default_factory=dict)


def open_gguf(path: str | Path) -> GGUFFile:
    """Open a GGUF file: every tensor's name and (torch-order) shape, the quantized ones
    as bytes, the float ones readable with ``get``."""
    gguf = _gguf()
    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError) as exc:
        raise CorruptCheckpoint(f"{path.name} is not a readable GGUF file ({exc}); the download is damaged or incomplete. Download it again.") from None
    tensors: dict[str, TensorInfo] = {}
    quantized: dict[str, Quantized] = {}
    plain: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(list(t.shape)))
        kind = t.tensor_type.name
        tensors[t.name] = TensorInfo(kind, shape)
        if kind in _FLOATS:
            plain[t.name] = t.data
        else:
            if len(shape) != 2:
                raise CorruptCheckpoint(f"{path.name}: tensor {t.name!r} is quantized ({kind}) with shape {shape}; Brushwork reads quantized weights of linear layers only. The file is not a transformer it knows.")
            with warnings.catch_warnings():  # the file's read-only map: never written to
                warnings.simplefilter("ignore", UserWarning)
                rows = torch.from_numpy(np.asarray(t.data))
            quantized[t.name] = Quantized(int(t.tensor_type), rows, shape)
    metadata = {}
    arch = reader.fields.get("general.architecture")
    if arch is not None:
        metadata["general.architecture"] = bytes(arch.parts[-1]).decode("utf-8", "replace")

    def read(name: str, dtype: Optional[torch.dtype]) -> torch.Tensor:
        if name in quantized:
            return quantized[name].dequantize(dtype or torch.float32)
        data = plain[name]
        if tensors[name].dtype == "BF16":  # numpy has no bfloat16: stored as 16-bit words
            t = torch.from_numpy(np.array(data).view(np.int16)).view(torch.bfloat16)
        else:
            t = torch.from_numpy(np.array(data))
        t = t.reshape(tensors[name].shape)
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    return GGUFFile(path, tensors, metadata, read, None, quantized)


# ------------------------------------------------------------------ running quantized layers

def _dequantize_in(module: torch.nn.Module, args) -> None:
    module._parameters["weight"] = module._brushwork_quantized.dequantize(module._brushwork_compute).to(args[0].device)


def _stand_in_back(module: torch.nn.Module, args, output) -> None:
    module._parameters["weight"] = module._brushwork_stand_in


def keep_quantized(module: torch.nn.Module, weights: dict[str, Quantized], compute: torch.dtype, device: Optional[torch.device] = None) -> int:
    """Run ``module``'s linear layers named in ``weights`` (their weight parameter's full
    name) from their quantized bytes: each is dequantized to ``compute`` just before the
    layer runs and dropped after.  With ``device``, the bytes are moved there first (so
    the types dequantized in torch are dequantized there).  Returns how many layers were set up."""
    layers = dict(module.named_modules())
    count = 0
    for name, q in weights.items():
        if device is not None and q.rows.device != device:
            q = replace(q, rows=q.rows.to(device))
        owner = layers[name.rsplit(".", 1)[0]]
        if not isinstance(owner, torch.nn.Linear):
            raise TypeError(f"{name} is not a linear layer's weight; only those run quantized")
        owner._brushwork_quantized = q
        owner._brushwork_compute = compute
        owner._brushwork_stand_in = owner._parameters["weight"]
        owner.register_forward_pre_hook(_dequantize_in)
        owner.register_forward_hook(_stand_in_back, always_call=True)
        count += 1
    return count


def is_quantized(layer: torch.nn.Module) -> bool:
    """Whether ``layer`` runs from quantized bytes (:func:`keep_quantized`)."""
    return getattr(layer, "_brushwork_quantized", None) is not None
