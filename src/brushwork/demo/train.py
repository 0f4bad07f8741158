"""Train Brushwork's demo model from scratch: ``python -m brushwork.demo.train``.

The demo model is a Stable Diffusion 1.x-architecture checkpoint (CLIP text
encoder with the real tokenizer, a UNet with cross-attention, a VAE with 4 latent
channels and an 8x downscale), narrow enough to train on two CPU cores, saved in
the same single-file layout as ``v1-5-pruned-emaonly.safetensors`` so it goes
through exactly the loader civitai files use.

Recipe (see docs/demo-model.md for the measured times):

1. Render a fixed dataset of captioned procedural landscapes
   (:mod:`brushwork.demo.scenes`), 128x128 pixels.
2. Train the VAE alone on random 64x64 crops: L1 + L2 reconstruction and a tiny
   KL term, as in Stable Diffusion's autoencoder (no adversarial loss).
3. Encode the whole dataset once; the latent scale is set so the latents have
   unit variance (stored in the file's metadata).
4. Train the text encoder and UNet together on those latents: epsilon
   prediction, the scaled-linear 1000-step schedule of SD 1.x, offset noise (so
   night scenes can be really dark), an EMA of the UNet weights (saved).
5. Fine-tune the VAE decoder alone on whole 128x128 images (the encoder, and so
   the latent space the UNet learned, stays fixed): crops never show the decoder
   a whole picture, and without this step dark night scenes decode as grey.

Everything is seeded; the run saves its whole state (weights, optimizers, EMA,
random generators, step) every few minutes and at each stage's end, and resumes
from it when restarted with the same settings.  CUDA is used when present.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models import save
from ..models.detect import TE_SD1, ModelSpec, UNetConfig, VAEConfig, norm_groups
from ..models.families import _clip
from ..models.load import Networks
from ..sampling.schedules import scaled_linear_alphas_cumprod

log = logging.getLogger("brushwork.demo.train")

PACKAGED = Path(__file__).resolve().parent.parent / "assets" / "demo" / "demo.safetensors"


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    images: int = 8000
    size: int = 128
    vae_steps: int = 3000
    vae_batch: int = 16
    vae_crop: int = 64
    vae_lr: float = 1e-3
    unet_steps: int = 3000
    unet_batch: int = 32
    unet_lr: float = 5e-4
    warmup: int = 200
    offset_noise: float = 0.1
    ema_decay: float = 0.999
    decoder_steps: int = 600
    decoder_batch: int = 8
    decoder_lr: float = 3e-4
    palette: float = 0.5  # chance that a VAE training image gets colour patches (paint_patches)
    save_every_s: float = 180.0

    def key(self) -> str:
        """Identifies the run; a saved state only resumes under the same settings."""
        fields = {k: v for k, v in asdict(self).items() if k != "save_every_s"}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def demo_spec(size: int = 128) -> ModelSpec:
    """The demo architecture: an SD 1.x layout at widths a CPU can train."""
    widths = (64, 128, 128)
    unet = UNetConfig(4, 4, widths, 1, (False, True, True), (0, 1, 1), 1, 64, False, (8, 8, 8), norm_groups(widths))
    vae_w = (16, 32, 64, 64)
    vae = VAEConfig(3, 3, 4, vae_w, 1, norm_groups(vae_w), True, 1.0)
    return ModelSpec("sd1", "epsilon", size, unet, vae, (_clip(TE_SD1, "hf", 64, 2, 256),))


#: what the demo model's defaults are (stored in its metadata, read by the engine)
DEMO_DEFAULTS = {"width": 128, "height": 128, "steps": 20, "cfg_scale": 7.0, "sampler": "DPM++ 2M", "schedule": "Karras"}


# ------------------------------------------------------------------ data


def render_dataset(cfg: TrainConfig) -> tuple[torch.Tensor, list[str]]:
    from .scenes import dataset

    images, captions = [], []
    for img, caption, _scene in dataset(cfg.seed, cfg.images):
        images.append(torch.from_numpy(np.ascontiguousarray(img)))
        captions.append(caption)
    return torch.stack(images).permute(0, 3, 1, 2).contiguous(), captions


def tokenize_all(captions: list[str]) -> torch.Tensor:
    from ..conditioning import chunk_ids, tokenize

    rows = []
    for c in captions:
        ids = tokenize(c)[:75]
        rows.append(chunk_ids(ids, pad_id=49407)[0])
    return torch.tensor(rows, dtype=torch.long)


def paint_patches(img: torch.Tensor, gen: torch.Generator, chance: float, scale: int) -> torch.Tensor:
    """Paint random saturated discs and boxes into some images of a batch in [-1, 1].

    The landscapes hold few saturated colours, so a decoder trained on them alone
    cannot draw a magenta balloon or a red car at all: it maps those latents to the
    nearest landscape colour.  Patches of every hue widen its palette without
    teaching it any object (the UNet never sees them), which is what lets a LoRA
    add a colourful concept later, as with a real Stable Diffusion VAE.
    """
    n, _, h, w = img.shape
    out = img.clone()
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    for i in range(n):
        if torch.rand((), generator=gen).item() >= chance:
            continue
        for _ in range(int(torch.randint(1, 4, (), generator=gen))):
            hue, sat, val, r, cx, cy, box = torch.rand(7, generator=gen).tolist()
            colour = torch.tensor(_hsv(hue, 0.5 + 0.5 * sat, 0.45 + 0.55 * val)) * 2 - 1
            radius = (0.03 + 0.14 * r) * scale
            cx, cy = cx * w, cy * h
            if box < 0.3:
                mask = ((xx - cx).abs() < radius) & ((yy - cy).abs() < radius * 0.7)
                mask = mask.float()
            else:
                mask = (radius - torch.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)).clamp(0, 1)
            out[i] = out[i] * (1 - mask) + colour.view(3, 1, 1) * mask
    return out


def _hsv(h: float, s: float, v: float) -> list[float]:
    import colorsys

    return list(colorsys.hsv_to_rgb(h, s, v))


def to_unit(pixels_u8: torch.Tensor) -> torch.Tensor:
    return pixels_u8.float() / 127.5 - 1.0


# ------------------------------------------------------------------ schedule


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


# ------------------------------------------------------------------ state


class Trainer:
    def __init__(self, cfg: TrainConfig, state_dir: Path, device: torch.device):
        self.cfg = cfg
        self.dir = state_dir
        self.device = device
        self.state_path = state_dir / f"state-{cfg.key()}.pt"
        self.spec = demo_spec(cfg.size)
        torch.manual_seed(cfg.seed)
        self.nets: Networks = save.random_networks(self.spec, seed=cfg.seed)
        self.ema = copy.deepcopy(self.nets.unet)
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.stage = "vae"
        self.step = 0
        self.scale = 1.0
        self.latents: torch.Tensor | None = None
        self.vae_opt = torch.optim.AdamW(self.nets.vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
        params = list(self.nets.unet.parameters()) + list(self.nets.text_encoders[0].parameters())
        self.unet_opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01)
        decoder = list(self.nets.vae.decoder.parameters()) + list(self.nets.vae.post_quant_conv.parameters())
        self.decoder_opt = torch.optim.AdamW(decoder, lr=cfg.decoder_lr, weight_decay=0.0)
        self.elapsed = {"vae": 0.0, "encode": 0.0, "unet": 0.0, "decoder": 0.0}
        self.last_save = time.monotonic()

    # -- persistence
    def save_state(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {
            "config": asdict(self.cfg),
            "stage": self.stage,
            "step": self.step,
            "scale": self.scale,
            "latents": self.latents,
            "vae": self.nets.vae.state_dict(),
            "unet": self.nets.unet.state_dict(),
            "te": self.nets.text_encoders[0].state_dict(),
            "ema": self.ema.state_dict(),
            "vae_opt": self.vae_opt.state_dict(),
            "unet_opt": self.unet_opt.state_dict(),
            "decoder_opt": self.decoder_opt.state_dict(),
            "gen": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "elapsed": self.elapsed,
        }
        tmp = self.state_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.state_path)
        self.last_save = time.monotonic()
        log.info("saved training state at %s step %d", self.stage, self.step)

    def maybe_resume(self) -> bool:
        if not self.state_path.exists():
            return False
        s = torch.load(self.state_path, map_location="cpu", weights_only=False)
        self.stage, self.step, self.scale, self.latents = s["stage"], s["step"], s["scale"], s["latents"]
        self.nets.vae.load_state_dict(s["vae"])
        self.nets.unet.load_state_dict(s["unet"])
        self.nets.text_encoders[0].load_state_dict(s["te"])
        self.ema.load_state_dict(s["ema"])
        self.vae_opt.load_state_dict(s["vae_opt"])
        self.unet_opt.load_state_dict(s["unet_opt"])
        if "decoder_opt" in s:
            self.decoder_opt.load_state_dict(s["decoder_opt"])
        self.gen.set_state(s["gen"])
        torch.set_rng_state(s["torch_rng"])
        self.elapsed = {**self.elapsed, **s["elapsed"]}
        log.info("resumed from %s: stage %s, step %d", self.state_path, self.stage, self.step)
        return True

    def _tick(self) -> None:
        if time.monotonic() - self.last_save > self.cfg.save_every_s:
            self.save_state()

    def _optimise(self, opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float, clip: list | None = None) -> None:
        """One optimiser step at learning rate ``lr`` (gradients clipped to norm 1 if ``clip``)."""
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(clip, 1.0)
        opt.step()

    def _count(self, stage: str, total: int, loss: torch.Tensor, t0: float) -> None:
        """Bookkeeping after each step of a stage: count, time, log, periodic save."""
        self.step += 1
        self.elapsed[stage] = time.monotonic() - t0
        if self.step % 100 == 0:
            log.info("%s step %d/%d loss %.4f (%.0fs)", stage, self.step, total, loss.item(), self.elapsed[stage])
        self._tick()

    # -- stages
    def train_vae(self, pixels: torch.Tensor) -> None:
        cfg, vae = self.cfg, self.nets.vae.to(self.device).train()
        n, crop = pixels.shape[0], cfg.vae_crop
        t0 = time.monotonic() - self.elapsed["vae"]
        while self.step < cfg.vae_steps:
            idx = torch.randint(0, n, (cfg.vae_batch,), generator=self.gen)
            ys = torch.randint(0, cfg.size - crop + 1, (cfg.vae_batch,), generator=self.gen)
            xs = torch.randint(0, cfg.size - crop + 1, (cfg.vae_batch,), generator=self.gen)
            batch = torch.stack([pixels[i, :, y : y + crop, x : x + crop] for i, y, x in zip(idx.tolist(), ys.tolist(), xs.tolist())])
            img = paint_patches(to_unit(batch), self.gen, cfg.palette, cfg.size).to(self.device)
            post = vae.encode(img).latent_dist
            rec = vae.decode(post.sample(generator=None)).sample
            loss = F.l1_loss(rec, img) + F.mse_loss(rec, img) + 1e-6 * post.kl().mean()
            self._optimise(self.vae_opt, loss, lr_at(self.step, cfg.vae_steps, cfg.vae_lr, cfg.warmup))
            self._count("vae", cfg.vae_steps, loss, t0)
        self.stage, self.step = "encode", 0
        self.save_state()

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> None:
        t0 = time.monotonic()
        vae = self.nets.vae.to(self.device).eval()
        means = []
        for i in range(0, pixels.shape[0], 64):
            means.append(vae.encode(to_unit(pixels[i : i + 64]).to(self.device)).latent_dist.mean.cpu())
        lat = torch.cat(means)
        self.scale = float(1.0 / lat.std())
        self.latents = lat * self.scale
        self.elapsed["encode"] = time.monotonic() - t0
        self.stage, self.step = "unet", 0
        self.save_state()

    def train_unet(self, ids: torch.Tensor) -> None:
        cfg = self.cfg
        unet, te = self.nets.unet.to(self.device).train(), self.nets.text_encoders[0].to(self.device).train()
        self.ema.to(self.device)
        abar = scaled_linear_alphas_cumprod().float().to(self.device)
        lat = self.latents
        n = lat.shape[0]
        t0 = time.monotonic() - self.elapsed["unet"]
        while self.step < cfg.unet_steps:
            idx = torch.randint(0, n, (cfg.unet_batch,), generator=self.gen)
            x0 = lat[idx].to(self.device)
            # random horizontal flips: landscapes read the same mirrored
            flip = torch.rand(cfg.unet_batch, generator=self.gen) < 0.5
            x0 = torch.where(flip[:, None, None, None].to(self.device), x0.flip(-1), x0)
            t = torch.randint(0, 1000, (cfg.unet_batch,), generator=self.gen).to(self.device)
            eps = torch.randn(x0.shape, generator=self.gen).to(self.device)
            eps = eps + cfg.offset_noise * torch.randn(x0.shape[0], x0.shape[1], 1, 1, generator=self.gen).to(self.device)
            a = abar[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
            ctx = te(input_ids=ids[idx].to(self.device)).last_hidden_state
            pred = unet(xt, t, encoder_hidden_states=ctx).sample
            loss = F.mse_loss(pred, eps)
            lr = lr_at(self.step, cfg.unet_steps, cfg.unet_lr, cfg.warmup)
            self._optimise(self.unet_opt, loss, lr, clip=list(unet.parameters()) + list(te.parameters()))
            with torch.no_grad():
                decay = min(cfg.ema_decay, (1 + self.step) / (10 + self.step))
                for pe, p in zip(self.ema.parameters(), unet.parameters()):
                    pe.lerp_(p, 1 - decay)
            self._count("unet", cfg.unet_steps, loss, t0)
        self.stage, self.step = "decoder", 0
        self.save_state()

    def train_decoder(self, pixels: torch.Tensor) -> None:
        cfg, vae = self.cfg, self.nets.vae.to(self.device).train()
        n = pixels.shape[0]
        t0 = time.monotonic() - self.elapsed["decoder"]
        while self.step < cfg.decoder_steps:
            idx = torch.randint(0, n, (cfg.decoder_batch,), generator=self.gen)
            img = paint_patches(to_unit(pixels[idx]), self.gen, cfg.palette, cfg.size).to(self.device)
            with torch.no_grad():
                z = vae.encode(img).latent_dist.mean
            rec = vae.decode(z).sample
            loss = F.l1_loss(rec, img) + F.mse_loss(rec, img)
            self._optimise(self.decoder_opt, loss, lr_at(self.step, cfg.decoder_steps, cfg.decoder_lr, 50))
            self._count("decoder", cfg.decoder_steps, loss, t0)
        self.stage = "done"
        self.save_state()

    # -- output
    def write_checkpoint(self, path: Path, overwrite: bool) -> Path:
        nets = Networks(copy.deepcopy(self.ema).cpu().eval(), self.nets.vae.cpu().eval(), [self.nets.text_encoders[0].cpu().eval()])
        cfg = self.cfg
        minutes = {k: round(v / 60, 1) for k, v in self.elapsed.items()}
        meta = {
            "modelspec.title": "Brushwork demo: cinematic landscapes",
            "modelspec.architecture": "stable-diffusion-v1",
            "modelspec.resolution": f"{cfg.size}x{cfg.size}",
            "modelspec.description": "Trained from scratch by Brushwork on procedural captioned landscapes (python -m brushwork.demo.train).",
            "brushwork.vae_scaling_factor": repr(self.scale),
            "brushwork.defaults": json.dumps(DEMO_DEFAULTS),
            "brushwork.vae_decode": "mirrored-halves",  # its decoder's corner speck (vae.decode_mirrored_halves)
            "brushwork.training": json.dumps({"config": asdict(cfg), "minutes": minutes, "device": self.device.type, "threads": torch.get_num_threads(), "torch": torch.__version__}),
        }
        return save.save_checkpoint(path, self.spec, nets, dtype=torch.float16, metadata=meta, overwrite=overwrite)


def run(cfg: TrainConfig, out: Path, state_dir: Path, overwrite: bool = False, device: str | None = None) -> Path:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it, or choose another --out.")
    trainer = Trainer(cfg, state_dir, dev)
    trainer.maybe_resume()
    t0 = time.monotonic()
    pixels, captions = render_dataset(cfg)
    log.info("rendered %d scenes in %.1fs", len(captions), time.monotonic() - t0)
    if trainer.stage == "vae":
        trainer.train_vae(pixels)
    if trainer.stage == "encode":
        trainer.encode(pixels)
    if trainer.stage == "unet":
        trainer.train_unet(tokenize_all(captions))
    if trainer.stage == "decoder":
        trainer.train_decoder(pixels)
    path = trainer.write_checkpoint(out, overwrite)
    log.info("wrote %s (%.1f MB); minutes per stage: %s", path, path.stat().st_size / 2**20, {k: round(v / 60, 1) for k, v in trainer.elapsed.items()})
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="brushwork-train-demo", description="Train Brushwork's demo model from scratch (CPU or CUDA).")
    p.add_argument("--out", type=Path, default=Path("demo.safetensors"), help="where to write the checkpoint")
    p.add_argument("--state-dir", type=Path, default=Path("demo-train-state"), help="where to keep the resumable training state")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-steps", type=int, default=TrainConfig.vae_steps)
    p.add_argument("--unet-steps", type=int, default=TrainConfig.unet_steps)
    p.add_argument("--decoder-steps", type=int, default=TrainConfig.decoder_steps)
    p.add_argument("--images", type=int, default=TrainConfig.images)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(seed=args.seed, vae_steps=args.vae_steps, unet_steps=args.unet_steps, decoder_steps=args.decoder_steps, images=args.images)
    try:
        run(cfg, args.out, args.state_dir, args.overwrite, args.device)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
