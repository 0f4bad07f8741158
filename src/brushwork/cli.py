"""The ``brushwork`` command: a thin client of :class:`brushwork.engine.Engine`.

    brushwork generate "a lighthouse at dusk" --seed 42
    brushwork generate --from outputs/2026-11-26/00003-42.png
    brushwork models
    brushwork models set NAME --steps 30 --cfg 5
    brushwork models link ~/stable-diffusion-webui
    brushwork doctor
    brushwork info IMAGE
    brushwork samplers
"""
from __future__ import annotations

import argparse
import shlex
import datetime as _dt
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from . import __version__

EXIT_USAGE = 2

MAIN_EXAMPLES = """examples:
  brushwork generate "a lighthouse at dusk" --seed 42
  brushwork models                      list your checkpoints
  brushwork models set NAME --steps 30  a model's own defaults (models show NAME: where each comes from)
  brushwork models link ~/stable-diffusion-webui   use an AUTOMATIC1111/ComfyUI install's models in place
  brushwork pull SOURCE                 download a model (civitai, Hugging Face, the starter list)
  brushwork doctor                      check the GPU, torch, memory, disk and model folders
  brushwork serve                       the web studio at http://127.0.0.1:7860/

Run 'brushwork COMMAND --help' for a command's options."""

GENERATE_EXAMPLES = """examples:
  brushwork generate "a lighthouse at dusk"
  brushwork generate "a red barn, (sunset:1.2)" -n "fog" --seed 42 --steps 30 --cfg 6
  brushwork generate "a cat <lora:balloon:0.8>" --sampler "DPM++ 2M Karras" -W 768 -H 512
  brushwork generate --from outputs/2026-11-26/00003-42.png --seed 43

<lora:NAME:0.8> in the prompt applies the LoRA NAME at weight 0.8 (see: brushwork loras).
Pictures are saved as PNG with their parameters into HOME/outputs/DATE (or --out);
each saved path is printed with its seed. brushwork info PICTURE shows them again."""


IMG2IMG_EXAMPLES = """examples:
  brushwork img2img day.png "a lake at sunset" --strength 0.6
  brushwork img2img field.png "a lake" --mask lake-mask.png
  brushwork img2img photo.png "a wide landscape" --outpaint left=128,right=128
  brushwork img2img --from outputs/2026-12-02/00004-42.png

The result has the picture's size unless -W/-H say otherwise (--resize-mode says how).
--from re-creates a refined picture: its init image (and mask) are found again in
HOME/outputs/init-images, where every picture you start from is kept."""


UPSCALE_EXAMPLES = """examples:
  brushwork upscale outputs/2026-12-02/00004-42.png --scale 2
  brushwork upscale photo.png --upscaler RealESRGAN_x4plus --scale 4
  brushwork upscale small.png --size 1920x1080 --upscaler 4x-UltraSharp

Upscaler model files (ESRGAN, RealESRGAN, SwinIR, DAT, HAT, ... as .pth or
.safetensors) need the optional spandrel package (docs/upscalers.md)."""


COMPARE_EXAMPLES = """examples:
  brushwork compare "a lighthouse" --x "Steps: 5,20,45,75"
  brushwork compare "a lighthouse" --x "Steps: 10-40 [4]" --y "CFG Scale: 1,4,7,12"
  brushwork compare "a cat <lora:balloon:0>" --x "Prompt S/R: <lora:balloon:0>,<lora:balloon:0.5>,<lora:balloon:1>"
  brushwork compare "a fox" --x "Checkpoint name: demo,juggernautXL_v9" --y "Seed: 1,2,3"

Axes: Seed, Var. seed, Var. strength, Steps, CFG Scale, Prompt S/R, Prompt order,
Sampler, Schedule type, Checkpoint name, Clip skip, Size, Denoising, Hires steps,
Hires sampler, Hires upscaler. Values: a,b,c
("quoted, with commas"), 1-5, 1-10 (+2), 1-10 [5], 0.5-1.5 (+0.25).
The grid is saved in HOME/outputs/grids/DATE, every cell in HOME/outputs/DATE with
its own parameters (brushwork generate --from CELL re-creates it)."""


MODELS_EXAMPLES = """examples:
  brushwork models                                  list the checkpoints, marking those with saved defaults
  brushwork models set dreamshaper_8 --steps 30 --cfg 5 --sampler "DPM++ 2M" --schedule Karras --size 768x512 --clip-skip 2
  brushwork models set dreamshaper_8 --unset clip-skip
  brushwork models show dreamshaper_8               each default and where it comes from
  brushwork models link ~/stable-diffusion-webui    an AUTOMATIC1111/Forge install, used in place
  brushwork models link ~/ComfyUI                   a ComfyUI install (and its extra_model_paths.yaml)
  brushwork models unlink ~/stable-diffusion-webui
  brushwork models --starter                        models Brushwork can pull for you

A request's own settings always win; then the model's saved defaults, then what the
checkpoint's metadata says, then the family's (docs/models.md)."""

CLUSTER_EXAMPLES = """examples (docs/cluster.md):
  ray start --head --port 6379                      on the machine that serves (the head)
  brushwork serve --cluster auto                    the server: jobs go to the cluster's workers
  ray start --address HEAD:6379                     on each GPU machine, then:
  brushwork worker --address HEAD:6379              one worker per GPU (--device cuda:0 to pick)
  brushwork cluster status                          the workers, their models and jobs

Every machine needs the checkpoints and LoRAs the jobs name, under the same names."""

PULL_DESCRIPTION = "Download a model into the data home: a civitai or Hugging Face URL, an AIR, hf://owner/repo/file, an https URL, or a name from brushwork models --starter. The file is checked before it is put in place."


def _pull_arguments(parser: argparse.ArgumentParser) -> None:
    """The downloader's own options (brushwork.fetch.cli); while it is missing, a
    placeholder that says so when used."""
    try:
        from .fetch.cli import add_pull_arguments

        add_pull_arguments(parser)
    except Exception:  # noqa: BLE001 - the downloader is optional here: every other command must still work
        parser.add_argument("pull_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    if "--home" not in parser._option_string_actions:
        parser.add_argument("--home", default=argparse.SUPPRESS, help="data folder (default: $BRUSHWORK_HOME or the platform's data folder)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="brushwork", description="Local Stable Diffusion image generation.", epilog=MAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"brushwork {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--home", help="data folder (default: $BRUSHWORK_HOME or the platform's data folder)")

    def memory_options(sp) -> None:
        sp.add_argument("--memory-plan", default=None, metavar="PLAN", help="where weights live and how they are kept (default auto: from free memory). "
                        "CPU: resident, 'tiled VAE', '16-bit at rest', 'text encoders released'; GPU: resident, 'tiled VAE', 'text encoders on the CPU', 'VAE swapped in', sequential (docs/memory.md)")
        sp.add_argument("--memory-limit", default=None, metavar="SIZE", help="the most memory to plan for, e.g. 10G (default: $BRUSHWORK_MEMORY_LIMIT, else what is free)")
        sp.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16", "fp16"], help="arithmetic precision (default auto: fp16 on GPUs, fp32 on CPUs). "
                        "bf16 on a CPU with bf16 units is several times faster and draws a slightly different picture (written as 'Precision: bf16' in the infotext)")

    def generation_options(g: argparse.ArgumentParser) -> None:
        g.add_argument("--negative", "-n", help="what to avoid")
        g.add_argument("--seed", type=int, help="-1 for random (default); image i of the run uses seed+i")
        g.add_argument("--steps", type=int, help="sampling steps, 1-150 (more: more detail, more time)")
        g.add_argument("--cfg", type=float, help="CFG scale: how closely to follow the prompt (typically 4-7; Flux: 1, no negative pass)")
        g.add_argument("--distilled-cfg", type=float, default=None, metavar="G", help="Flux.1 dev's distilled guidance (Forge's Distilled CFG Scale, default 3.5)")
        g.add_argument("--sampler", help='e.g. "DPM++ 2M", "Euler a", or "DPM++ 2M Karras" (see: brushwork samplers)')
        g.add_argument("--schedule", help="Automatic, Uniform, Karras, Exponential, SGM Uniform or Simple")
        g.add_argument("--width", "-W", type=int, help="width in pixels, a multiple of 8")
        g.add_argument("--height", "-H", type=int, help="height in pixels, a multiple of 8")
        g.add_argument("--batch-size", type=int, default=None, help="images per batch (run together)")
        g.add_argument("--batch-count", type=int, default=None, help="how many batches to run one after another")
        g.add_argument("--clip-skip", type=int, default=None, help="use an earlier text-encoder layer (1 = last)")
        g.add_argument("--vae", default=None, metavar="NAME", help="the VAE: Automatic (default: a VAE file made for the checkpoint, else its own), None (its own), or a file in HOME/models/vae, e.g. sdxl_vae.safetensors")
        g.add_argument("--rng", type=str.upper, choices=["CPU", "GPU", "NV"], default=None, help="where the noise comes from: CPU (default; the same on any machine), GPU or NV (AUTOMATIC1111's NVIDIA noise, re-created on any machine)")
        g.add_argument("--var-seed", type=int, default=None, metavar="N", help="variation seed: mix in the noise of seed N (-1 random) by --var-strength")
        g.add_argument("--var-strength", type=float, default=None, metavar="S", help="how much of the variation seed's noise, 0-1 (0.05-0.3: a small variation of the same picture)")
        g.add_argument("--seed-resize-from", metavar="WxH", default=None, help="make the noise as for a picture of WxH, so a seed keeps its composition at another size")
        g.add_argument("--ensd", type=int, default=None, metavar="N", help="AUTOMATIC1111's eta noise seed delta: step noise re-seeded with seed+N (0 = off; 31337 is common)")
        g.add_argument("--style", action="append", default=None, metavar="NAME", help="apply a saved prompt style from HOME/styles.csv (repeatable, applied in order; see: brushwork styles)")
        g.add_argument("--model", "-m", help="checkpoint: name, file name, path or model hash (default: the last one used)")
        g.add_argument("--out", "-o", help="output folder (default: HOME/outputs/DATE)")
        g.add_argument("--from", dest="from_image", metavar="IMAGE", help="re-create an image from the parameters stored in it")
        g.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
        g.add_argument("--ema", action="store_true", help="use the checkpoint's EMA UNet weights when it has both")
        g.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
        g.add_argument("--max-minutes", type=float, default=None, help="refuse requests estimated to take longer than this (default 60; 0: no limit)")
        g.add_argument("--threads", metavar="N", default=None, help="CPU threads for torch (default: $BRUSHWORK_THREADS, else the cores other programs leave free; 0 or auto: choose)")
        memory_options(g)
        common(g)


    def hires_options(sp) -> None:
        h = sp.add_argument_group("hires fix", "generate at the model's size, upscale, then refine at the larger size (any --hires-* option turns it on)")
        h.add_argument("--hires", action="store_true", default=None, help="turn the hires fix on (defaults by model: SD 1.5: 2x, 10 steps, strength 0.5)")
        h.add_argument("--hires-scale", type=float, default=None, metavar="S", help="upscale by S (e.g. 2: 512 -> 1024 px)")
        h.add_argument("--hires-resize", default=None, metavar="WxH", help="upscale to this size instead (0 for one side: from the aspect, e.g. 1024x0)")
        h.add_argument("--hires-upscaler", default=None, metavar="NAME", help="Latent (default), 'Latent (bicubic)', ..., Lanczos, Nearest or an upscaler model (see: brushwork upscalers)")
        h.add_argument("--hires-steps", type=int, default=None, metavar="N", help="steps of the hires pass (0: the same as --steps)")
        h.add_argument("--hires-strength", type=float, default=None, metavar="S", help="denoising strength of the hires pass, 0-1 (0.3-0.6 keeps the picture; latent upscalers want 0.5 or more)")
        h.add_argument("--hires-sampler", default=None, help="sampler of the hires pass (default: the same)")
        h.add_argument("--hires-schedule", default=None, help="schedule of the hires pass (default: the same)")
        h.add_argument("--hires-prompt", default=None, help="prompt of the hires pass (default: the same)")
        h.add_argument("--hires-negative", default=None, help="negative prompt of the hires pass (default: the same)")
        h.add_argument("--hires-cfg", type=float, default=None, help="CFG scale of the hires pass (default: the same)")

    g = sub.add_parser("generate", help="make images from a prompt", description="Make images from a prompt. Settings left out use the model's defaults.", epilog=GENERATE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("prompt", nargs="?", help="what to draw; <lora:NAME:0.8> in it applies a LoRA at weight 0.8 (see: brushwork loras)")
    generation_options(g)
    hires_options(g)

    i2i = sub.add_parser("img2img", help="redraw a picture, inpaint part of it (--mask) or extend it (--outpaint)", description="Redraw a picture from a prompt: img2img, inpaint with a mask (white = repaint) or outpaint (extend the canvas). The size defaults to the picture's own.", epilog=IMG2IMG_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    i2i.add_argument("image", nargs="?", help="the picture to start from (PNG, JPEG or WebP); with --from it may be left out when the picture is in HOME/outputs/init-images")
    i2i.add_argument("prompt", nargs="?", help="what the result should show")
    i2i.add_argument("--strength", type=float, default=None, help="denoising strength 0-1: 0 keeps the picture, 1 redraws it fully (default 0.75); steps x strength are run")
    i2i.add_argument("--exact-steps", action="store_true", default=None, help="run exactly --steps steps whatever the strength")
    i2i.add_argument("--resize-mode", default=None, help="when the size differs from the picture's: 'just resize' (default), 'crop and resize', 'resize and fill' or 'latent upscale'")
    i2i.add_argument("--mask", help="inpaint: a mask picture, white = repaint, black = keep (a transparent picture without --mask repaints its transparent area)")
    i2i.add_argument("--mask-blur", type=int, default=None, help="soften the mask's edge by N pixels (default 4)")
    i2i.add_argument("--invert-mask", action="store_true", default=None, help="repaint the black part instead")
    i2i.add_argument("--masked-content", default=None, help="what the masked area starts from: original (default), fill, 'latent noise' or 'latent nothing'")
    i2i.add_argument("--only-masked", action="store_true", default=None, help="inpaint only the mask's area, at full resolution, and paste it back")
    i2i.add_argument("--padding", type=int, default=None, help="--only-masked: pixels of context around the mask (default 32)")
    i2i.add_argument("--outpaint", metavar="SIDES", help="extend the canvas and paint the new area, e.g. left=128,top=64 (multiples of 8)")
    i2i.add_argument("--outpaint-fill", choices=["edge", "noise"], default=None, help="what the new area starts from: edge colours (default) or noise")
    generation_options(i2i)

    cp = sub.add_parser("compare", help="an X/Y/Z grid: the same picture over a range of settings", description="Make a comparison grid: every combination of the --x, --y (and --z) axis values, as one job. Axes use AUTOMATIC1111's X/Y/Z plot names and value syntax.", epilog=COMPARE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    cp.add_argument("prompt", nargs="?", help="the base prompt of every cell (or --from PICTURE: its settings are the base)")
    cp.add_argument("--x", required=True, metavar="'AXIS: VALUES'", help="the axis across, e.g. 'Steps: 5,20,45,75'")
    cp.add_argument("--y", metavar="'AXIS: VALUES'", help="the axis down, e.g. 'CFG Scale: 1,4,7,12'")
    cp.add_argument("--z", metavar="'AXIS: VALUES'", help="one sub-grid per value, e.g. 'Checkpoint name: a,b'")
    cp.add_argument("--vary-seeds", default="", metavar="AXES", help="the seed counts up along these axes, e.g. x or x,y (default: every cell has the same seed)")
    cp.add_argument("--keep-random-seeds", action="store_true", help="with seed -1, every cell draws its own random seed")
    cp.add_argument("--no-legend", action="store_true", help="no axis labels on the grid")
    cp.add_argument("--no-cells", action="store_true", help="save only the grid, not every cell as its own PNG")
    cp.add_argument("--margin", type=int, default=0, help="pixels between cells (default 0)")
    generation_options(cp)
    hires_options(cp)

    up = sub.add_parser("upscale", help="make a picture bigger with an upscaler (Lanczos, or an ESRGAN-family model file)", description="Upscale pictures (AUTOMATIC1111's Extras): each result is saved next to the others with the picture's parameters and the upscale's. Upscaler model files go in HOME/models/upscalers (or A1111's models/ESRGAN, models/RealESRGAN, ComfyUI's models/upscale_models).", epilog=UPSCALE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    up.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG or WebP pictures")
    up.add_argument("--scale", "-s", type=float, default=None, help="upscale by this factor (default 2)")
    up.add_argument("--size", metavar="WxH", default=None, help="upscale to this size instead (the middle is kept when the aspect differs; --stretch to stretch)")
    up.add_argument("--stretch", action="store_true", help="with --size: stretch instead of cropping")
    up.add_argument("--upscaler", "-u", default="Lanczos", help="Lanczos (default), Nearest or an upscaler model's name (see: brushwork upscalers)")
    up.add_argument("--upscaler-2", default="None", help="a second upscaler blended in by --visibility-2")
    up.add_argument("--visibility-2", type=float, default=0.0, help="how much of the second upscaler, 0-1")
    up.add_argument("--out", "-o", help="output folder (default: HOME/outputs/DATE)")
    up.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
    common(up)

    ups = sub.add_parser("upscalers", help="list the upscalers: built-in ones and the model files found", description="List the upscalers: Lanczos and Nearest, the hires fix's latent modes, and every upscaler model file found (with architecture and scale).")
    common(ups)

    m = sub.add_parser("models", help="list the checkpoints; set a model's defaults, link existing installs, pull models", description="Without an ACTION: list the checkpoints in HOME/models/checkpoints, the linked installs' and the built-in demo model with family, size and hash. Pass a NAME or HASH from this list to generate --model.", epilog=MODELS_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("--no-hash", action="store_true", help="skip computing file hashes (faster for big new files)")
    m.add_argument("--starter", action="store_true", help="list the starter models Brushwork can pull for you")
    common(m)
    msub = m.add_subparsers(dest="models_action", metavar="ACTION")

    def sub_home(sp: argparse.ArgumentParser) -> None:  # SUPPRESS: a --home before ACTION is kept
        sp.add_argument("--home", default=argparse.SUPPRESS, help="data folder (default: $BRUSHWORK_HOME or the platform's data folder)")

    ms = msub.add_parser("set", help="save settings as a model's own defaults", description="Save steps, CFG, sampler, schedule, size and clip skip as NAME's own defaults: every generation with it that leaves a setting out gets them (before the checkpoint's metadata and the family's defaults). Kept in HOME/model-defaults.json; the checkpoint is never changed.", epilog=MODELS_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ms.add_argument("name", help="the checkpoint: a name from brushwork models, a file name or a hash")
    ms.add_argument("--steps", type=int, help="sampling steps, 1-150")
    ms.add_argument("--cfg", type=float, help="CFG scale, 0-30")
    ms.add_argument("--sampler", help='e.g. "DPM++ 2M" or "Euler a" (see: brushwork samplers)')
    ms.add_argument("--schedule", help="Automatic, Karras, Exponential, ...")
    ms.add_argument("--size", metavar="WxH", help="width x height in pixels, multiples of 8, e.g. 768x512")
    ms.add_argument("--width", "-W", type=int, help="width alone")
    ms.add_argument("--height", "-H", type=int, help="height alone")
    ms.add_argument("--clip-skip", type=int, help="text-encoder layer counted from the end (1 = last; 2 for many anime models)")
    ms.add_argument("--unset", action="append", default=[], metavar="FIELD", help="forget one saved setting: steps, cfg, sampler, schedule, size, width, height or clip-skip (repeatable)")
    ms.add_argument("--clear", action="store_true", help="forget everything saved for this model")
    sub_home(ms)
    msh = msub.add_parser("show", help="a model's defaults and where each comes from", description="Show NAME's defaults and where each comes from: saved (brushwork models set), the checkpoint's metadata, or the family's default.")
    msh.add_argument("name", help="the checkpoint: a name from brushwork models, a file name or a hash")
    sub_home(msh)
    ml = msub.add_parser("link", help="use the models of an AUTOMATIC1111/Forge or ComfyUI install in place", description="Link an existing install: its checkpoints, LoRAs, VAEs, embeddings and upscalers are listed and used where they are, after Brushwork's own (nothing is copied or changed there). PATH: an AUTOMATIC1111/Forge webui folder, a ComfyUI folder (its extra_model_paths.yaml is read too) or an extra_model_paths.yaml file. Without PATH: list the links. Kept in HOME/links.json.", epilog=MODELS_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ml.add_argument("path", nargs="?", help="the install's folder or an extra_model_paths.yaml")
    sub_home(ml)
    mu = msub.add_parser("unlink", help="stop using a linked install (nothing there is touched)", description="Forget a link made with brushwork models link; the install's files are not touched.")
    mu.add_argument("path", help="the linked folder or yaml file, as brushwork models link lists it")
    sub_home(mu)
    mp = msub.add_parser("pull", help="download a model (the same as brushwork pull)", description=PULL_DESCRIPTION)
    _pull_arguments(mp)

    t = sub.add_parser("train-lora", help="train a LoRA from a folder of images with .txt captions")
    t.add_argument("dataset", help="folder of images, each with a same-named .txt caption")
    t.add_argument("--model", "-m", help="checkpoint to train for (default: the last one used)")
    t.add_argument("--out", "-o", help="LoRA file to write (default: HOME/models/loras/DATASET.safetensors)")
    t.add_argument("--steps", type=int, default=400, help="training steps (default: 400)")
    t.add_argument("--rank", type=int, default=4, help="LoRA rank: bigger learns more detail, makes a bigger file (default: 4)")
    t.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 0.001)")
    t.add_argument("--batch-size", type=int, default=4, help="images per training step (default: 4)")
    t.add_argument("--seed", type=int, default=0, help="seed of the training noise, for repeatable runs (default: 0)")
    t.add_argument("--size", type=int, help="training resolution (default: the checkpoint's)")
    t.add_argument("--conv-rank", type=int, default=0, help="also train the UNet's 3x3 convs at this rank (LoCon; default 0: off)")
    t.add_argument("--train-text-encoder", action="store_true", help="also train the text encoder (helps with words the model has never seen)")
    t.add_argument("--flip", action="store_true", help="random horizontal flips (for subjects that read the same mirrored)")
    t.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
    t.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    common(t)

    pl = sub.add_parser("pull", help="download a model: civitai, Hugging Face, a URL or a starter-list name", description=PULL_DESCRIPTION)
    _pull_arguments(pl)

    dr = sub.add_parser("doctor", help="check the GPU, torch build, memory, disk and model folders, and say how to fix problems", description="Check what Brushwork runs on (GPU, torch build, free memory and disk) and what it finds (the data home, every model folder, damaged checkpoints), and say for each problem what it means and how to fix it. Exits 1 when a problem is found, else 0.")
    common(dr)

    lo = sub.add_parser("loras", help="list the LoRAs found, with family, hash and trigger words", description="List the LoRAs in HOME/models/loras (and the built-in ones) with family, hash and trigger words. Use one by adding <lora:NAME:0.8> to a prompt (0.8: its weight; 1 = full strength).")
    common(lo)

    sv = sub.add_parser("serve", help="run the web studio and HTTP API (AUTOMATIC1111-compatible too)", description="Serve the web studio at http://HOST:PORT/, the native API under /api/v1 and AUTOMATIC1111's API under /sdapi/v1.")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860, AUTOMATIC1111's)")
    sv.add_argument("--model", "-m", help="checkpoint to load at start (default: the last one used)")
    sv.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
    sv.add_argument("--auth", metavar="USER:PASSWORD", help="require HTTP Basic auth (needed to listen beyond this machine)")
    sv.add_argument("--token", help="require 'Authorization: Bearer TOKEN' (at least 16 characters)")
    sv.add_argument("--insecure", action="store_true", help="allow listening beyond this machine without a password")
    sv.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body accepted (default 32 MB)")
    sv.add_argument("--cors", action="append", default=[], metavar="ORIGIN", help="allow browser pages from ORIGIN to call the API (repeatable; default: none)")
    sv.add_argument("--allow-host", action="append", default=[], metavar="NAME", help="also answer to NAME in the Host header (repeatable; without a password only this machine's names and the --host address are answered, against DNS rebinding)")
    sv.add_argument("--trust-proxy", action="store_true", help="believe X-Forwarded-For/-Proto from a reverse proxy on 127.0.0.1 (default: ignored, so clients cannot pick their address)")
    sv.add_argument("--preview-every", type=int, default=5, help="live preview every N steps (default 5)")
    sv.add_argument("--max-job-minutes", type=float, default=None, help="refuse jobs estimated to take longer than this on this device (default 60; 0: no limit)")
    sv.add_argument("--max-queued", type=int, default=200, help="jobs one client may have waiting at once (default 200)")
    sv.add_argument("--threads", metavar="N", default=None, help="CPU threads for torch (default: $BRUSHWORK_THREADS, else the cores other programs leave free; 0 or auto: choose)")
    sv.add_argument("--cluster", metavar="auto|ADDRESS", help="run the jobs on the Brushwork workers of a Ray cluster (auto: the one this machine joined; ADDRESS: HEAD:6379) instead of here; needs pip install -e \".[cluster]\" (docs/cluster.md)")
    memory_options(sv)
    common(sv)

    wk = sub.add_parser("worker", help="run a server's jobs on this machine's GPUs, as part of a Ray cluster", description="Start Brushwork workers on this machine for a server started with serve --cluster: one per visible GPU (or one on the CPU). The machine must have joined a Ray cluster (ray start --head, or ray start --address HEAD:6379) and have the same checkpoints as the server, under the same names. Runs until Ctrl-C. Needs pip install -e \".[cluster]\" (docs/cluster.md).", epilog=CLUSTER_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    wk.add_argument("--address", default="auto", help="the Ray cluster: HEAD:6379 (default auto: the cluster this machine joined with ray start)")
    wk.add_argument("--device", action="append", metavar="DEVICE", help="cpu or cuda:N, one worker each (repeatable; default: every visible GPU, else the CPU)")
    wk.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPU cores Ray reserves for each worker (default 1)")
    wk.add_argument("--threads", metavar="N", default=None, help="CPU threads for torch in each worker (default: as for serve)")
    wk.add_argument("--max-job-minutes", type=float, default=None, help="refuse jobs estimated to take longer than this on this worker (the server sends them to another; default 60; 0: no limit)")
    wk.add_argument("--memory-limit", metavar="SIZE", help="memory each worker may use, e.g. 10G (jobs that do not fit go to another worker)")
    common(wk)

    cl = sub.add_parser("cluster", help="the workers of a Ray cluster: devices, loaded models, jobs", description="Look at the Brushwork workers of a Ray cluster.", epilog=CLUSTER_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    csub = cl.add_subparsers(dest="action", metavar="ACTION")
    cs = csub.add_parser("status", help="each worker: machine, device, loaded checkpoint and LoRAs, running job, its queue, jobs run, model loads", description="List each worker of the cluster: machine, device, loaded checkpoint and LoRAs, free memory, the job it runs now, how many waiting jobs the server plans for it next, the jobs it ran and the checkpoints it read; then the jobs waiting in this data home's server queue.")
    cs.add_argument("--address", default="auto", help="the Ray cluster: HEAD:6379 (default auto)")
    common(cs)

    i = sub.add_parser("info", help="show the generation parameters stored in an image", description="Show the generation parameters (prompt, seed, sampler ...) stored in a picture made by Brushwork or AUTOMATIC1111. Re-create it with: brushwork generate --from IMAGE")
    i.add_argument("image", help="a PNG, JPEG or WebP picture")

    hi = sub.add_parser("history", help="look after the server's history database")
    hsub = hi.add_subparsers(dest="history_command", metavar="ACTION", required=True)
    hr = hsub.add_parser("rebuild", help="re-index the pictures in the outputs folder from their infotexts", description="Re-index the pictures in HOME/outputs from the parameters stored in them. A damaged or empty database is moved aside first (never deleted); a healthy one only gains the pictures it does not list yet.")
    common(hr)

    sub.add_parser("samplers", help="list sampler and schedule names", description="List the samplers (AUTOMATIC1111's names) with their automatic schedule, and the schedules, for generate --sampler and --schedule.")

    st = sub.add_parser("styles", help="list or save prompt styles (HOME/styles.csv, AUTOMATIC1111's format)", description="Without arguments: list the saved styles. With --add NAME: save a style; {prompt} in its text marks where your prompt goes (otherwise the style is appended after a comma).")
    st.add_argument("--add", metavar="NAME", help="save a new style under NAME (an existing name is refused unless --replace)")
    st.add_argument("--prompt", default="", help="the style's prompt text, e.g. \"{prompt}, watercolor, soft light\"")
    st.add_argument("--negative", default="", help="the style's negative prompt text")
    st.add_argument("--replace", action="store_true", help="with --add: replace a style of the same name")
    common(st)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if args.command is None:
        _parser().print_help()
        return EXIT_USAGE
    handler = {"generate": cmd_generate, "img2img": cmd_generate, "compare": cmd_compare, "models": cmd_models, "pull": cmd_pull, "doctor": cmd_doctor, "loras": cmd_loras, "train-lora": cmd_train_lora, "serve": cmd_serve, "info": cmd_info, "samplers": cmd_samplers, "history": cmd_history, "styles": cmd_styles, "upscale": cmd_upscale, "upscalers": cmd_upscalers, "worker": cmd_worker, "cluster": cmd_cluster}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("\ninterrupted; the images saved above are kept.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `brushwork info X | head` stopped reading: not an error
        _silence_stdout()
        return 0
    except Exception as exc:  # noqa: BLE001 - turn the errors we raise for users into messages
        if not _is_user_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _silence_stdout() -> None:
    """Point stdout at the null device, so flushing it at exit raises no second BrokenPipeError."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _is_user_error(exc: Exception) -> bool:
    from .devices import DeviceError
    from .memory.manager import MemoryOptionError, OutOfMemory
    from .engine import RequestError
    from .init_image import ImageInputError
    from .compare.axes import AxisError
    from .compare.grid import GridTooLarge
    from .infotext import InfotextError
    from .models.errors import ModelFileError
    from .outputs import NotAnImageError, OutputError
    from .lora import LoraError
    from .prompts.styles import StylesFileError
    from .lora_train import DatasetError
    from .sampling.registry import UnknownSamplerError
    from .server.security import BindError
    from .server.store import HistoryDamaged, StorageFull

    if isinstance(exc, ValueError) and str(exc).startswith("--port"):
        return True
    from .runtime import TorchvisionMismatch
    from .upscale import UpscalerError
    from .links import LinkError
    from .cluster.pool import NoCluster

    return isinstance(exc, (NoCluster, LinkError, TorchvisionMismatch, UpscalerError, AxisError, GridTooLarge, ImageInputError, HistoryDamaged, StorageFull, StylesFileError, BindError, LoraError, DatasetError, DeviceError, RequestError, InfotextError, ModelFileError, NotAnImageError, OutputError, UnknownSamplerError, FileNotFoundError, FileExistsError, MemoryOptionError, OutOfMemory))


# ------------------------------------------------------------------ generate


def _request_from_image(path: str):
    from .engine import GenerationRequest
    from .hires import hires_fields
    from .infotext import InfotextError, noise_settings, params_from_infotext
    from .outputs import read_infotext

    text = read_infotext(path)
    if not text:
        raise InfotextError(f"{path} carries no generation parameters (no 'parameters' text in the file), so it cannot be re-created.")
    p = params_from_infotext(text)
    rng, ensd = noise_settings(p)  # no RNG key means GPU, AUTOMATIC1111's default
    req = GenerationRequest(
        prompt=p.prompt,
        negative_prompt=p.negative_prompt,
        seed=p.seed,
        steps=p.steps,
        cfg_scale=p.cfg_scale,
        sampler=p.sampler,
        schedule=p.schedule,
        width=p.width,
        height=p.height,
        clip_skip=p.clip_skip,
        vae=p.extra.get("VAE") or "None",  # the VAE file it names, else the checkpoint's own
        rng=rng,
        ensd=ensd,
        stop_at_step=_stopped_at(p),
        distilled_cfg_scale=_distilled_of(p),
        **_variation_of(p),
        **hires_fields(p.extra),
    )
    return req, p


def _distilled_of(params) -> Optional[float]:
    """Flux.1 dev's distilled guidance as Forge writes it (None: not in the infotext)."""
    from .infotext import DISTILLED_KEY, InfotextError

    raw = params.extra.get(DISTILLED_KEY)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise InfotextError(f"the picture's {DISTILLED_KEY} cannot be read: {raw!r}") from None


def _variation_of(params) -> dict:
    """The variation-seed fields an infotext records (A1111's keys)."""
    from .infotext import InfotextError

    out: dict = {}
    extra = params.extra
    try:
        if "Variation seed strength" in extra:
            out["subseed_strength"] = float(extra["Variation seed strength"])
            out["subseed"] = int(extra.get("Variation seed", -1))
        if "Seed resize from" in extra:
            w, _, h = str(extra["Seed resize from"]).partition("x")
            out["seed_resize_from_w"], out["seed_resize_from_h"] = int(w), int(h)
    except ValueError:
        raise InfotextError(f"the picture's variation settings cannot be read: {extra.get('Variation seed')!r}, {extra.get('Variation seed strength')!r}, {extra.get('Seed resize from')!r}") from None
    return out


def _wxh(text: str) -> Optional[tuple[int, int]]:
    """``"512x768"`` (any case, spaces allowed around the numbers) -> (512, 768); None when it is no such size."""
    w, _, h = text.lower().partition("x")
    if not (w.strip().isdigit() and h.strip().isdigit()):
        return None
    return int(w), int(h)


def _generation_fields(args) -> tuple[dict, Optional[str]]:
    """The request fields the generation options give (None: left to the model or
    the picture), and what is wrong with them, if anything."""
    fields = {
        "prompt": args.prompt,
        "negative_prompt": args.negative,
        "seed": args.seed,
        "steps": args.steps,
        "cfg_scale": args.cfg,
        "distilled_cfg_scale": args.distilled_cfg,
        "sampler": args.sampler,
        "schedule": args.schedule,
        "width": args.width,
        "height": args.height,
        "batch_size": args.batch_size,
        "batch_count": args.batch_count,
        "clip_skip": args.clip_skip,
        "vae": args.vae,
        "rng": args.rng,
        "ensd": args.ensd,
        "subseed": args.var_seed,
        "subseed_strength": args.var_strength,
    }
    if args.seed_resize_from is not None:
        size = _wxh(args.seed_resize_from)
        if size is None:
            return fields, f"--seed-resize-from takes WIDTHxHEIGHT, e.g. 512x512; got {args.seed_resize_from!r}"
        fields.update(seed_resize_from_w=size[0], seed_resize_from_h=size[1])
    if hasattr(args, "hires_scale"):
        hires = {
            "hires_scale": args.hires_scale, "hires_upscaler": args.hires_upscaler, "hires_steps": args.hires_steps, "hires_strength": args.hires_strength,
            "hires_sampler": args.hires_sampler, "hires_schedule": args.hires_schedule, "hires_prompt": args.hires_prompt,
            "hires_negative_prompt": args.hires_negative, "hires_cfg": args.hires_cfg,
        }
        if args.hires_resize is not None:
            size = _wxh(args.hires_resize)
            if size is None or not any(size):
                return fields, f"--hires-resize takes WIDTHxHEIGHT (0 for one side: from the aspect), e.g. 1024x1024 or 1024x0; got {args.hires_resize!r}"
            hires.update(hires_resize_x=size[0], hires_resize_y=size[1])
        if args.hires or any(v is not None for v in hires.values()):
            fields.update(hires=True, **hires)
    return fields, None


def _with_pictures(home, req, args, params):
    """The refine request with its init image and mask read (``--from``: found again
    in HOME/inputs by the infotext's hashes when not given), and both kept in
    HOME/inputs so that the result can be re-created later."""
    from dataclasses import replace

    from .init_image import ImageInputError, image_hash, read_image_file
    from .outputs import find_input, save_input
    from .refine import INIT_HASH_KEY, MASK_HASH_KEY

    def picture(given, key, what, flag):
        wanted = params.extra.get(key) if params is not None else None
        if given is not None:
            img = read_image_file(given, what)
            if wanted and image_hash(img) != wanted:
                print(f"warning: {given} is not the {what} {args.from_image} was made from (its hash is {image_hash(img)}, the picture's parameters say {wanted}); the result will differ", file=sys.stderr)
            return img
        if not wanted:
            return None
        found = find_input(home.inputs, wanted)
        for path in found:
            img = read_image_file(path, what)
            if image_hash(img) == wanted:
                return img
        raise ImageInputError(f"the {what} {args.from_image} was made from (hash {wanted}) is not in {home.inputs}; give it again: brushwork img2img {what.upper().replace(' ', '_')} --from {args.from_image}" if flag is None else
                              f"the {what} {args.from_image} was made from (hash {wanted}) is not in {home.inputs}; give it again with {flag} FILE")

    init = picture(args.image, INIT_HASH_KEY, "init image", None)
    if init is None:
        raise ImageInputError(f"{args.from_image} does not say which picture it was made from (no '{INIT_HASH_KEY}'); give the picture: brushwork img2img IMAGE --from {args.from_image}")
    mask = picture(args.mask, MASK_HASH_KEY, "mask", "--mask")
    save_input(init, home.inputs, image_hash(init))
    if mask is not None:
        save_input(mask, home.inputs, image_hash(mask))
    return replace(req, init_image=init, mask=mask)


def _stopped_at(params):
    """The step a stopped picture shows (infotext "Stopped at step"), None for a finished one."""
    from .infotext import STOPPED_KEY, InfotextError

    value = params.extra.get(STOPPED_KEY)
    if value is None:
        return None
    try:
        step = int(value)
    except ValueError:
        raise InfotextError(f"the infotext's {STOPPED_KEY} {value!r} is not a step number") from None
    if not 1 <= step <= params.steps:
        raise InfotextError(f"the infotext's {STOPPED_KEY} {step} is outside its {params.steps} steps")
    return step


def _model_for_image(home, params) -> str:
    """The checkpoint an infotext names: by hash first, then by name."""
    from .catalog import find_checkpoint
    from .models.errors import CheckpointNotFound

    for query in (params.model_hash, params.model_name):
        if query:
            try:
                return str(find_checkpoint(home, query))
            except CheckpointNotFound:
                continue
    named = params.model_name or "an unnamed model"
    raise CheckpointNotFound(
        f"the image was made with {named}" + (f" [{params.model_hash}]" if params.model_hash else "")
        + ", which is not among your checkpoints. Add it to the checkpoints folder, or pass --model to re-create it with another one."
    )


def _unstyled(home, req, names: str):
    """An infotext's prompts hold its styles' words already: take the styles back
    out, so they are applied once (a style changed since then keeps the words)."""
    from dataclasses import replace

    from .prompts.styles import extract_styles, read_styles, style_names

    found = extract_styles(req.prompt, req.negative_prompt, style_names(names), read_styles(home.styles_file))
    for warning in found.warnings:
        print(f"note: {warning}", file=sys.stderr)
    return replace(req, prompt=found.prompt, negative_prompt=found.negative_prompt, styles=found.applied)


def _first_run(home) -> list[str]:
    """Create the data home's folders when they are missing; the line saying where they are."""
    if home.checkpoint_dirs[0].is_dir():
        return []
    try:
        home.create()
    except OSError:
        return []  # a read-only home: the errors later say what is missing
    return [f"created the data folder {home.root}: checkpoints go in {home.checkpoint_dirs[0]}, LoRAs in {home.lora_dirs[0]}, pictures in {home.outputs}"]


def _model_lines(home, loaded, choice, size) -> list[str]:
    """What the user should know about the checkpoint just loaded: a new checkpoint
    that took over the default, the built-in demo, a size far from the model's own."""
    from .catalog import far_from_native, is_demo, native_size_hint
    from .engine import family_defaults

    d = family_defaults(loaded.spec)
    native = (d.width, d.height)
    lines = []
    if choice is not None and choice.is_new(loaded.path):
        lines.append(f"using your new checkpoint {loaded.path.name} (found in {loaded.path.parent}); --model picks another")
    elif choice is not None and is_demo(loaded.path):
        lines.append(
            f"using the built-in demo model: {native[0]} px pictures of simple scenes, for trying Brushwork out. For real pictures put a "
            f".safetensors or .ckpt checkpoint (SD 1.x, SD 2.x or SDXL, from civitai or Hugging Face) into {home.checkpoint_dirs[0]}"
        )
    w, h = size[0] or native[0], size[1] or native[1]
    if far_from_native(native, (w, h)):
        lines.append(f"warning: {w}x{h} is far from this model's size. {native_size_hint(native)}")
    return lines


def _header(loaded, engine, req) -> str:
    """The line before a run: model, device, size, steps, sampler with its schedule
    ("DPM++ 2M Karras"), CFG, and the prompt's LoRAs (``balloon:0.8``)."""
    from .prompts import extract_extra_networks
    from .sampling.registry import resolve_sampler, schedule_label

    info, schedule = resolve_sampler(req.sampler, req.schedule)
    label = schedule_label(info, schedule)
    sampler = info.label if label == "Automatic" else f"{info.label} {label}"
    from .engine import planned_steps

    steps = f"{req.steps} steps" if not req.refines else f"strength {req.denoising_strength:g}: {planned_steps(req)} of {req.steps} steps"
    where = engine.placement.label if loaded.dtype is None else f"{engine.placement.device.type} ({str(loaded.dtype).removeprefix('torch.')})"
    line = f"{loaded.path.name} ({loaded.spec.label}) on {where}: {req.width}x{req.height}, {steps}, {sampler}, CFG {req.cfg_scale}"
    if req.distilled_cfg_scale is not None and getattr(loaded.spec, "guidance", False):
        line += f", distilled CFG {req.distilled_cfg_scale}"
    if req.hires:
        from .hires import hires_size, upscaler_name
        from .request import hires_steps_run

        size = hires_size(req.width, req.height, req.hires_scale, req.hires_resize_x, req.hires_resize_y)
        line += f", then hires fix to {size.width}x{size.height} ({upscaler_name(req)}, strength {req.hires_strength:g}: {hires_steps_run(req)} steps)"
    loras = [n for n in extract_extra_networks(req.prompt).networks if n.kind == "lora"]
    if loras:
        line += ", LoRA " + ", ".join(f"{n.name}:{n.te:g}" + (f":{n.unet:g}" if n.unet != n.te else "") for n in loras)
    return line


def _say_expected_time(engine, req) -> None:
    """Before a long job (say SD 1.5 on a laptop CPU: minutes per image), one line with
    the estimate from this device's measured speed."""
    from .budget import LONG_JOB_SECONDS, expectation, worth_announcing
    from .engine import unet_calls

    if not worth_announcing(req.width, req.height, unet_calls(req), req.batch_size, req.batch_count, float(req.cfg_scale)):
        return  # small jobs: no counting needed, they are quick anywhere
    est = engine.estimate_time(req)
    if est.seconds >= LONG_JOB_SECONDS:
        print(expectation(est, req.batch_size * req.batch_count, engine.placement.label), file=sys.stderr)


def cmd_generate(args) -> int:
    from dataclasses import replace

    from .budget import optional_limit
    from .engine import Engine, GenerationRequest, validate_request
    from .outputs import ensure_writable_folder, save_png
    from .paths import DataHome

    home = DataHome.resolve(args.home)
    model = args.model
    refining = args.command == "img2img"
    if args.from_image:
        req, params = _request_from_image(args.from_image)
        if model is None:
            model = _model_for_image(home, params)
        from .refine import STRENGTH_KEY, refine_fields

        if refining:
            req = replace(req, **refine_fields(params.extra))
        elif STRENGTH_KEY in params.extra and "Init image hash" in params.extra:
            print(f"error: {args.from_image} was made from another picture (img2img or inpaint); re-create it with: brushwork img2img --from {shlex.quote(args.from_image)}", file=sys.stderr)
            return EXIT_USAGE
    elif refining:
        if args.image is None:
            print("error: give the picture to start from, e.g. brushwork img2img day.png \"a lake at sunset\" (or --from RESULT)", file=sys.stderr)
            return EXIT_USAGE
        req = GenerationRequest()
    else:
        if args.prompt is None:
            print("error: give a prompt, e.g. brushwork generate \"a lighthouse at dusk\" (or --from IMAGE)", file=sys.stderr)
            return EXIT_USAGE
        req = GenerationRequest()
    overrides, problem = _generation_fields(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if refining:
        overrides.update({
            "denoising_strength": args.strength, "exact_steps": args.exact_steps, "resize_mode": args.resize_mode,
            "mask_blur": args.mask_blur, "invert_mask": args.invert_mask, "masked_content": args.masked_content,
            "inpaint_area": "only masked" if args.only_masked else None, "only_masked_padding": args.padding, "outpaint_fill": args.outpaint_fill,
        })
        if args.outpaint is not None:
            from .outpaint import parse_outpaint

            overrides["outpaint"] = parse_outpaint(args.outpaint)
    req = replace(req, **{k: v for k, v in overrides.items() if v is not None})
    if refining:
        req = _with_pictures(home, req, args, params if args.from_image else None)
    if args.from_image and "Styles" in params.extra and args.style is None:
        req = _unstyled(home, req, params.extra["Styles"])
    if args.style is not None:
        req = replace(req, styles=args.style)
    if args.sampler is not None and args.schedule is None and args.from_image:
        req = replace(req, schedule=None)
    if req.stop_at_step is not None:
        if args.steps is not None:
            req = replace(req, stop_at_step=None)  # new steps: run to the end
        elif not args.quiet:
            print(f"note: this picture was stopped at step {req.stop_at_step} of {req.steps}; it is re-created the same way (pass --steps {req.steps} to run it to the end)", file=sys.stderr)

    validate_request(req)  # a typo or an impossible value: said before torch loads a multi-GB model
    from .vae_select import check_vae_name

    check_vae_name(home, req.vae)
    out_dir = Path(args.out) if args.out else home.outputs / _dt.date.today().isoformat()
    out_dir = ensure_writable_folder(out_dir)  # fail before any compute
    engine = Engine(home, device=args.device, use_ema=args.ema, max_job_seconds=optional_limit(args.max_minutes), threads=args.threads, memory_plan=args.memory_plan, memory_limit=args.memory_limit, precision=args.precision)
    from .catalog import default_choice

    model_lines = _first_run(home)
    choice = default_choice(home) if model is None else None
    loaded = engine.load(model)
    model_lines += _model_lines(home, loaded, choice, (req.width, req.height))
    for line in model_lines:
        print(line, file=sys.stderr)
    req = engine.complete(req, warn=False)  # the run itself warns (empty prompt ...)
    if not args.quiet:
        if engine.threads is not None and engine.threads.note():
            print(engine.threads.note(), file=sys.stderr)
        print(_header(loaded, engine, req), file=sys.stderr)
        _say_expected_time(engine, req)

    bar = None
    if not args.quiet:
        from tqdm import tqdm

        from .engine import planned_steps

        bar = tqdm(total=planned_steps(req) * req.batch_count, unit="it", file=sys.stderr, dynamic_ncols=True)

    def progress(p) -> None:
        if bar is not None:
            bar.update(p.step - bar.n)

    try:
        for batch in engine.batches(req, progress=progress):
            for img in batch:  # each batch is saved as soon as it is done
                path = save_png(img.image, out_dir, img.seed, img.infotext)
                line = f"{path}  seed {img.seed}"
                if bar is not None:
                    bar.write(line, file=sys.stdout)
                else:
                    print(line, flush=True)
    finally:
        if bar is not None:
            bar.close()
    return 0


def cmd_compare(args) -> int:
    from dataclasses import replace

    from .budget import optional_limit
    from .compare.axes import parse_axis
    from .compare.job import Comparison, grid_picture, run_comparison
    from .engine import Engine, GenerationRequest, validate_request
    from .outputs import ensure_writable_folder, save_png
    from .paths import DataHome

    home = DataHome.resolve(args.home)
    axes = [parse_axis(text) if text else None for text in (args.x, args.y, args.z)]
    vary = tuple(a in {v.strip().lower() for v in args.vary_seeds.split(",") if v.strip()} for a in "xyz")
    fields, problem = _generation_fields(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if (args.batch_size or 1) != 1 or (args.batch_count or 1) != 1:
        print("error: a comparison makes one picture per cell; for more seeds add an axis, e.g. --y 'Seed: 1,2,3'", file=sys.stderr)
        return EXIT_USAGE
    base, model = GenerationRequest(), args.model
    if args.from_image:  # the picture's settings are every cell's base, the options change them
        base, params = _request_from_image(args.from_image)
        if "Init image hash" in params.extra:
            print(f"error: {args.from_image} was made from another picture (img2img or inpaint); a comparison grid starts from a txt2img picture", file=sys.stderr)
            return EXIT_USAGE
        base = replace(base, stop_at_step=None)
        if model is None:
            model = _model_for_image(home, params)
    elif args.prompt is None:
        print("error: give the base prompt, e.g. brushwork compare \"a lighthouse\" --x 'Steps: 5,20' (or --from PICTURE)", file=sys.stderr)
        return EXIT_USAGE
    req = replace(base, **{k: v for k, v in fields.items() if v is not None})
    if args.style:
        req = replace(req, styles=args.style)
    validate_request(req)
    cmp = Comparison(req, axes[0], axes[1], axes[2], vary_seeds=vary, keep_random_seeds=args.keep_random_seeds, draw_legend=not args.no_legend, margin=args.margin)
    from .compare.job import check_vae_values

    check_vae_values(home, cmp)  # before a model is loaded
    day = _dt.date.today().isoformat()
    out_dir = ensure_writable_folder(Path(args.out) if args.out else home.outputs / day)
    grid_dir = ensure_writable_folder(Path(args.out) / "grids" if args.out else home.outputs / "grids" / day)
    engine = Engine(home, device=args.device, use_ema=args.ema, max_job_seconds=optional_limit(args.max_minutes), threads=args.threads, memory_plan=args.memory_plan, memory_limit=args.memory_limit, precision=args.precision)
    loaded = engine.load(model)
    if not args.quiet:
        print(f"{loaded.path.name} ({loaded.spec.label}) on {engine.placement.label}", file=sys.stderr)
    bar = None
    results = []

    def progress(p) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=p.total, unit="it", file=sys.stderr, dynamic_ncols=True)
        bar.update(p.step - bar.n)

    try:
        for r in run_comparison(engine, cmp, progress):
            results.append(r)
            if not args.no_cells:
                path = save_png(r.image.image, out_dir, r.image.seed, r.image.infotext)
                line = f"{path}  seed {r.image.seed}  cell {r.cell.ix + 1},{r.cell.iy + 1},{r.cell.iz + 1} ({r.done}/{r.total})"
                (bar.write(line, file=sys.stdout) if bar is not None else print(line, flush=True))
    finally:
        if bar is not None:
            bar.close()
    if not results:
        return 1
    picture, text = grid_picture(cmp, results)
    path = save_png(picture, grid_dir, results[0].image.seed, text)
    print(f"{path}  grid {picture.width}x{picture.height}, {len(results)} cells", flush=True)
    return 0


# ------------------------------------------------------------------ other commands


def cmd_models(args) -> int:
    from .paths import DataHome

    action = getattr(args, "models_action", None)
    if action == "pull":
        return cmd_pull(args)
    home = DataHome.resolve(args.home)
    if action is None and args.starter:
        return _print_starter(home)
    actions = {"set": _models_set, "show": _models_show, "link": _models_link, "unlink": _models_unlink}
    if action in actions:
        return actions[action](home, args)
    return _models_list(home, args)


def _models_list(home, args) -> int:
    from .catalog import is_demo, no_checkpoint_message, summarize
    from .links import linked_install_of, read_links
    from .model_defaults import saved_defaults

    for line in _first_run(home):
        print(line, file=sys.stderr)
    rows = summarize(home, with_hash=not args.no_hash)
    if not rows:
        print(no_checkpoint_message(home))
        return 0
    name_w = max(len(r.entry.name) for r in rows)
    family_w = max([24] + [len(r.family) for r in rows])  # a split Flux model names its parts there
    print(f"{'NAME':<{name_w}}  {'FAMILY':<{family_w}}  {'SIZE':>9}  HASH")
    with_defaults = 0
    for r in rows:
        size = f"{r.size_bytes / 2**20:.1f} MB" if r.size_bytes < 2**30 else f"{r.size_bytes / 2**30:.2f} GB"
        notes = []
        if is_demo(r.entry.path):
            notes.append("(built-in demo)")
        if saved_defaults(home, r.entry.path):
            notes.append("(saved defaults)")
            with_defaults += 1
        link = None if is_demo(r.entry.path) else linked_install_of(home, r.entry.path)
        if link is not None:
            notes.append(f"(linked: {link.path})")
        print(f"{r.entry.name:<{name_w}}  {r.family:<{family_w}}  {size:>9}  {r.model_hash or '-'}" + "".join(f"  {n}" for n in notes))
    print()
    own = home.own_dirs("checkpoints")
    extra = [d for d in own[1:] if d.is_dir()]
    print(f"Checkpoints folder: {own[0]}" + "".join(f" (also read: {d})" for d in extra))
    own = home.own_dirs("loras")
    extra = [d for d in own[1:] if d.is_dir()]
    print(f"LoRA folder:        {own[0]}" + "".join(f" (also read: {d})" for d in extra))
    try:
        links = read_links(home)
    except ValueError as exc:
        print(f"note: {exc}", file=sys.stderr)
        links = []
    for link in links:
        there = any(link.existing(kind) for kind in link.folders)
        print(f"Linked:             {link.path} ({link.label})" + ("" if there else " - not found now: brushwork models unlink it, or reconnect its drive"))
    if with_defaults:
        print(f"{with_defaults} model(s) with saved defaults: brushwork models show NAME says which, and where the others come from.")
    if all(is_demo(r.entry.path) for r in rows):
        print("No checkpoints of your own yet: put a .safetensors or .ckpt file (SD 1.x, SD 2.x or SDXL, from civitai or Hugging Face) into the checkpoints folder.")
    return 0


#: --unset names -> the saved fields they forget
UNSET_NAMES = {"steps": ("steps",), "cfg": ("cfg_scale",), "cfg_scale": ("cfg_scale",), "cfg-scale": ("cfg_scale",), "sampler": ("sampler",), "schedule": ("schedule",),
               "size": ("width", "height"), "width": ("width",), "height": ("height",), "clip-skip": ("clip_skip",), "clip_skip": ("clip_skip",)}

SOURCE_WORDS = {"saved": "saved (brushwork models set)", "metadata": "checkpoint metadata", "family": "family default"}


def _models_set(home, args) -> int:
    from .catalog import find_checkpoint, inspect_checkpoint
    from .model_defaults import checkpoint_key, clear_defaults, save_defaults
    from .models.errors import ModelFileError

    path = find_checkpoint(home, args.name)
    values: dict = {"steps": args.steps, "cfg_scale": args.cfg, "sampler": args.sampler, "schedule": args.schedule, "width": args.width, "height": args.height, "clip_skip": args.clip_skip}
    if args.size is not None:
        size = _wxh(args.size)
        if size is None:
            print(f"error: --size takes WIDTHxHEIGHT, e.g. 768x512; got {args.size!r}", file=sys.stderr)
            return EXIT_USAGE
        if args.width is not None or args.height is not None:
            print("error: give --size, or --width/--height, not both", file=sys.stderr)
            return EXIT_USAGE
        values["width"], values["height"] = size
    values = {k: v for k, v in values.items() if v is not None}
    for name in args.unset:
        fields = UNSET_NAMES.get(name.strip().lower())
        if fields is None:
            print(f"error: --unset takes one of {', '.join(sorted(set(UNSET_NAMES) - {'cfg_scale', 'cfg-scale', 'clip_skip'}))}; got {name!r}", file=sys.stderr)
            return EXIT_USAGE
        for f in fields:
            if f in values:
                print(f"error: --unset {name} and a new value for it at once; give one of them", file=sys.stderr)
                return EXIT_USAGE
            values[f] = None
    if not values and not args.clear:
        print(f"error: say what to save, e.g. brushwork models set {shlex.quote(args.name)} --steps 30 --cfg 5 --size 768x512 (or --unset FIELD, --clear); brushwork models show {shlex.quote(args.name)} shows the current defaults", file=sys.stderr)
        return EXIT_USAGE
    if args.clear:
        clear_defaults(home, path)
    spec = None
    if values.get("clip_skip") is not None:
        try:
            spec = inspect_checkpoint(path)  # clip skip is checked against its text encoder now, not at the next generation
        except ModelFileError:
            spec = None
    saved = save_defaults(home, path, values, spec=spec) if values else {}
    name = checkpoint_key(home, path)
    if saved:
        print(f"saved as {name}'s own defaults (in {home.model_defaults_file}): " + ", ".join(f"{k} {v}" for k, v in saved.items()))
    else:
        print(f"{name} has no saved defaults now: it uses its checkpoint's and its family's.")
    return _models_show(home, args, header=False)


def _models_show(home, args, header: bool = True) -> int:
    from .catalog import find_checkpoint, inspect_checkpoint
    from .model_defaults import FIELD_LABELS, SAVED_FIELDS, checkpoint_key, effective_defaults

    path = find_checkpoint(home, args.name)
    spec = inspect_checkpoint(path)
    eff = effective_defaults(home, path, spec)
    if header:
        print(f"{checkpoint_key(home, path)} ({spec.label}): {path}")
    for field in SAVED_FIELDS:
        value = eff.values[field]
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        print(f"  {FIELD_LABELS[field]:<10} {shown:<16} {SOURCE_WORDS[eff.sources[field]]}")
    if header and "saved" not in eff.sources.values():
        print(f"Nothing saved for it yet: brushwork models set {shlex.quote(args.name)} --steps 30 --cfg 5 saves its own.")
    return 0


def _models_link(home, args) -> int:
    from .links import LAYOUT_LABELS, add_link, describe, read_links

    if args.path is None:
        links = read_links(home)
        if not links:
            print("Nothing linked. Link an install with: brushwork models link ~/stable-diffusion-webui (or a ComfyUI folder, or its extra_model_paths.yaml)")
            return 0
        for link in links:
            print(f"{link.path} ({link.label})")
            for line in describe(link):
                print(line)
        return 0
    link, before = add_link(home, args.path)
    print(f"{'refreshed the link to' if before else 'linked'} the {LAYOUT_LABELS.get(link.layout, link.layout)} at {link.path} (nothing there is copied or changed):")
    for line in describe(link):
        print(line)
    clashes = _name_clashes(home, link)
    if clashes:
        print(f"note: {', '.join(clashes[:5])}: a checkpoint of yours has the same name, and yours is used for that name; pass the linked file's path to --model to use it.", file=sys.stderr)
    print(f"They are used in place now (brushwork models, loras, upscalers list them). Stored in {home.links_file}; undo with: brushwork models unlink {shlex.quote(str(link.path))}")
    return 0


def _name_clashes(home, link) -> list[str]:
    """Names of the link's checkpoints that one of the user's own checkpoints takes."""
    from .catalog import user_checkpoints

    names: dict[str, list] = {}
    for e in user_checkpoints(home):
        names.setdefault(e.name, []).append(e.path)
    linked = link.existing("checkpoints")
    return [n for n, paths in names.items() if len(paths) > 1 and any(p.is_relative_to(f) for p in paths[1:] for f in linked)]


def _models_unlink(home, args) -> int:
    from .links import remove_link

    link = remove_link(home, args.path)
    print(f"unlinked {link.path}; its files are untouched, and no longer listed or used by Brushwork.")
    return 0


def _print_starter(home) -> int:
    try:
        from .fetch.cli import starter_lines
    except ImportError:
        print("error: the starter list comes with Brushwork's downloader, which is not installed here (brushwork.fetch); put checkpoint files into the checkpoints folder instead.", file=sys.stderr)
        return EXIT_USAGE
    for line in starter_lines(home):
        print(line)
    return 0


def cmd_pull(args) -> int:
    """brushwork pull / brushwork models pull: the downloader's (brushwork.fetch.cli)."""
    if not hasattr(args, "home"):
        args.home = None
    try:
        from .fetch.cli import cmd_pull as fetch_pull
    except ImportError:
        print("error: brushwork pull needs Brushwork's downloader (brushwork.fetch), which is not installed here; put model files into the data home's folders instead (brushwork models shows where).", file=sys.stderr)
        return EXIT_USAGE
    return fetch_pull(args)


def cmd_doctor(args) -> int:
    from .doctor import checks, format_findings
    from .paths import DataHome

    home = DataHome.resolve(args.home)
    findings = checks(home)
    for line in format_findings(findings):
        print(line)
    return 1 if any(f.level == "problem" for f in findings) else 0


def cmd_train_lora(args) -> int:
    from tqdm import tqdm

    from .engine import Engine
    from .lora_train import LoraTrainConfig, train_lora
    from .paths import DataHome

    home = DataHome.resolve(args.home)
    dataset = Path(args.dataset)
    out = Path(args.out) if args.out else home.lora_dirs[0] / f"{dataset.resolve().name}.safetensors"
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite.")
    engine = Engine(home, device=args.device)
    loaded = engine.load(args.model)
    cfg = LoraTrainConfig(steps=args.steps, rank=args.rank, lr=args.lr, batch=args.batch_size, seed=args.seed, size=args.size, conv_rank=args.conv_rank, conv_alpha=float(args.conv_rank or 1), text_encoder=args.train_text_encoder, flip=args.flip)
    print(f"training a rank-{cfg.rank} LoRA for {loaded.path.name} ({loaded.spec.label}) on {engine.placement.label}", file=sys.stderr)
    with tqdm(total=cfg.steps, unit="step", file=sys.stderr, dynamic_ncols=True) as bar:
        def progress(step: int, total: int, loss: float) -> None:
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{loss:.4f}")

        path = train_lora(engine, dataset, out, cfg, progress, overwrite=args.overwrite)
    print(f"{path}  (use it as <lora:{path.stem}:1>)")
    return 0


def cmd_serve(args) -> int:
    from .server import ServeOptions, serve

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be from 1 to 65535; got {args.port}")
    serve(ServeOptions(args.host, args.port, args.home, args.model, args.device, args.auth, args.token, args.insecure, args.max_body_mb, args.cors, args.preview_every, allow_hosts=args.allow_host, trust_proxy=args.trust_proxy, max_job_minutes=args.max_job_minutes, max_queued_per_client=args.max_queued, threads=args.threads, memory_plan=args.memory_plan, memory_limit=args.memory_limit, precision=args.precision, cluster=args.cluster))
    return 0


def cmd_worker(args) -> int:
    from .cluster.pool import connect
    from .cluster.worker import start_workers, visible_devices, wait_forever
    from .paths import DataHome

    home = DataHome.resolve(args.home)
    home.create()
    devices = args.device or visible_devices()
    for d in devices:
        if d != "cpu" and not d.startswith("cuda"):
            raise ValueError(f"--device {d!r}: a worker runs on cpu or cuda:N")
    connect(args.address)
    handles = start_workers(str(home.root), devices=devices, cpus_per_worker=args.cpus_per_worker, threads=args.threads, memory_limit=args.memory_limit, max_job_minutes=args.max_job_minutes)
    import ray

    for h in handles:
        info = ray.get(h.info.remote())
        print(f"worker {info['name']} ready on {info['device']} (models from {home.root})", flush=True)
    print("Serving the cluster's jobs; Ctrl-C stops these workers (a job running on one is run again elsewhere).", flush=True)
    wait_forever(handles)
    print("every worker of this command has stopped.", file=sys.stderr)
    return 1


def cmd_cluster(args) -> int:
    from .cluster.pool import WorkerPool, queued_in
    from .paths import DataHome

    if args.action != "status":
        _parser().parse_args(["cluster", "--help"])
        return EXIT_USAGE
    rows = WorkerPool(None if args.address == "auto" else args.address).status()
    if not rows:
        print("No Brushwork worker in the cluster. Start some on each GPU machine: brushwork worker --address HEAD:6379")
    else:
        print(format_cluster(rows))
    waiting = queued_in(DataHome.resolve(args.home).root / "brushwork.sqlite3")
    if waiting is not None:
        print(f"\n{waiting} job(s) waiting in the server's queue ({DataHome.resolve(args.home).root}).")
    return 0


def format_cluster(rows) -> str:
    """``brushwork cluster status``'s table."""
    head = ("WORKER", "HOST", "DEVICE", "MODEL", "LORAS", "FREE", "RUNNING", "QUEUED", "JOBS", "LOADS")
    table = [head]
    for r in sorted(rows, key=lambda r: r["name"]):
        free = f"{r['free_memory'] / 2**30:.1f} GiB" if r.get("free_memory") else "-"
        table.append((r["name"], r.get("host") or "-", r.get("device") or "-", r.get("model") or "-", ",".join(r.get("loras") or []) or "-", free,
                      r.get("running") or "-", str(len(r.get("queue") or [])), str(r.get("jobs_run", 0)), str(len(r.get("loads") or []))))
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)


def cmd_loras(args) -> int:
    from .lora import summarize_loras
    from .paths import DataHome

    from .links import linked_install_of
    from .lora import PACKAGED_LORAS

    home = DataHome.resolve(args.home)
    rows = summarize_loras(home)
    hint = f"Put .safetensors LoRA files into {home.lora_dirs[0]} and use them as <lora:NAME:0.8> in a prompt."
    if not rows:
        print(f"No LoRAs found. {hint}")
        return 0
    name_w = max(len(r.name) for r in rows)
    # the base model and recommended weight, where the listing knows them (older LoraSummary: no such columns)
    extra = [(title, attr) for title, attr in (("BASE", "base_model"), ("WEIGHT", "weight")) if hasattr(rows[0], attr)]
    widths = {attr: max([len(title)] + [len(_cell(getattr(r, attr, None))) for r in rows]) for title, attr in extra}
    head = "".join(f"  {title:<{widths[attr]}}" for title, attr in extra)
    print(f"{'NAME':<{name_w}}  {'FAMILY':<10}{head}  {'HASH':<12}  TRIGGER WORDS")
    for r in rows:
        built_in = " (built in, for the demo model)" if r.path.parent == PACKAGED_LORAS else ""
        link = None if built_in else linked_install_of(home, r.path)
        linked = f" (linked: {link.path})" if link is not None else ""
        cells = "".join(f"  {_cell(getattr(r, attr, None)):<{widths[attr]}}" for _, attr in extra)
        print(f"{r.name:<{name_w}}  {r.family:<10}{cells}  {r.addnet_hash:<12}  {', '.join(r.triggers) or '-'}{built_in}{linked}")
    if all(r.path.parent == PACKAGED_LORAS for r in rows):
        print(f"\nNo LoRAs of your own yet. {hint}")
    return 0


def _cell(value) -> str:
    """A listing cell: "-" for nothing, numbers without trailing zeros."""
    if value is None or value == "":
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


def cmd_styles(args) -> int:
    from .paths import DataHome
    from .prompts.styles import PromptStyle, add_style, read_styles

    home = DataHome.resolve(args.home)
    path = home.styles_file
    if args.add is not None:
        add_style(path, PromptStyle(args.add.strip(), args.prompt, args.negative), replace=args.replace)
        print(f"saved style {args.add.strip()!r} in {path}; use it with: brushwork generate \"...\" --style {shlex.quote(args.add.strip())}")
        return 0
    styles = read_styles(path)
    if not styles:
        print(f"No styles saved yet. Add one with: brushwork styles --add NAME --prompt \"{{prompt}}, watercolor\"  (or copy AUTOMATIC1111's styles.csv to {path})")
        return 0
    name_w = max(len(st.name) for st in styles)
    print(f"{'NAME':<{name_w}}  PROMPT  |  NEGATIVE PROMPT")
    for st in styles:
        print(f"{st.name:<{name_w}}  {st.prompt or '-'}  |  {st.negative_prompt or '-'}")
    return 0


def cmd_info(args) -> int:
    from .infotext import parse_infotext
    from .outputs import read_infotext

    image = Path(args.image)
    if image.is_dir():
        pictures = sorted(p.name for p in image.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))[:1]
        example = f", e.g. brushwork info {shlex.quote(str(image / pictures[0]))}" if pictures else " (this folder holds no PNG, JPEG or WebP pictures)"
        print(f"error: {args.image} is a folder; brushwork info reads the parameters stored in one picture{example}", file=sys.stderr)
        return EXIT_USAGE
    if not image.exists():
        print(f"error: {args.image} does not exist; brushwork info reads the parameters stored in a picture, e.g. one of those brushwork generate saved", file=sys.stderr)
        return EXIT_USAGE
    text = read_infotext(args.image)
    if not text:
        print(f"{args.image} has no generation parameters.", file=sys.stderr)
        return 1
    data = parse_infotext(text)
    width = max(len(k) for k in data)
    for key, value in data.items():
        if key.endswith(("-1", "-2")) and key[:-2] in data:
            continue
        print(f"{key + ':':<{width + 1}} {value}")
    return 0


def cmd_samplers(args) -> int:
    from .sampling.registry import SAMPLERS
    from .sampling.schedules import SCHEDULE_LABELS

    notes = {
        "dpm_adaptive": "picks its own step sizes; progress still shows the requested steps",
        "restart": "from 20 steps on, re-noises and re-walks part of the path",
        "ddim_cfgpp": "guides with CFG / 12.5; always runs the negative prompt",
    }
    print("Samplers (AUTOMATIC1111's names, in its order; all work):")
    for info in SAMPLERS.values():
        if info.fixed_grid:
            auto = "none, runs on DDIM's timestep grid"
        elif info.model_range:
            auto = "none, own steps over the model's sigma range"
        else:
            auto = SCHEDULE_LABELS[info.default_schedule]
        traits = [", ".join(info.aliases)]
        if info.calls_per_step > 1 and not info.model_range:
            traits.append(f"{info.calls_per_step} model calls per step")
        if info.stochastic:
            traits.append("stochastic")
        if info.key in notes:
            traits.append(notes[info.key])
        print(f"  {info.label:<18} (Automatic schedule: {auto})  [{'; '.join(traits)}]")
    print("Schedules (all work with every sampler except those that run on their own grid):")
    print("  " + ", ".join(f"{label} ({name})" for name, label in SCHEDULE_LABELS.items()))
    print("  Align Your Steps: NVIDIA's SD 1.5 table (also for SD 2.x) or its SDXL table, by the model's family.")
    print('A schedule can also be appended to the sampler name, e.g. "DPM++ 2M Karras".')
    return 0


def cmd_history(args) -> int:
    from .paths import DataHome
    from .server.rebuild import rebuild_history

    home = DataHome.resolve(args.home)
    report = rebuild_history(home)
    for line in report.lines():
        print(line)
    return 0





def cmd_upscale(args) -> int:
    from .devices import choose_placement
    from .init_image import read_image_file
    from .outputs import ensure_writable_folder, read_infotext, save_png
    from .paths import DataHome
    from .postprocess import UpscaleSettings, check_settings, target_size, upscale_picture, with_postprocess
    from .upscale import UpscalerError, find_upscaler

    home = DataHome.resolve(args.home)
    width = height = None
    if args.size is not None:
        size = _wxh(args.size)
        if size is None:
            print(f"error: --size takes WIDTHxHEIGHT, e.g. 1920x1080; got {args.size!r}", file=sys.stderr)
            return EXIT_USAGE
        width, height = size
        if args.scale is not None:
            print("error: give --scale or --size, not both", file=sys.stderr)
            return EXIT_USAGE
    settings = UpscaleSettings(upscaler=args.upscaler, scale=args.scale or 2.0, width=width, height=height, crop=not args.stretch,
                               upscaler_2=args.upscaler_2, visibility_2=args.visibility_2)
    check_settings(settings)
    try:  # every name and picture checked before the first upscale
        find_upscaler(home, settings.upscaler)
        if settings.visibility_2 > 0:
            find_upscaler(home, settings.upscaler_2)
    except UpscalerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    pictures = [(path, read_image_file(path, "picture")) for path in args.images]
    for _, picture in pictures:
        target_size(picture.width, picture.height, settings)
    out_dir = ensure_writable_folder(Path(args.out) if args.out else home.outputs / _dt.date.today().isoformat())
    device = choose_placement(args.device).device
    for path, picture in pictures:
        text = read_infotext(path) or ""
        seed = _seed_of(text)
        out, extra = upscale_picture(picture, settings, home, device)
        saved = save_png(out, out_dir, seed, with_postprocess(text, extra))
        print(f"{saved}  {picture.width}x{picture.height} -> {out.width}x{out.height} ({extra['Postprocess upscaler']})", flush=True)
    return 0


def _seed_of(infotext: str) -> int:
    """A picture's seed, for the saved file's name (0 when it records none)."""
    from .infotext import InfotextError, params_from_infotext

    try:
        return params_from_infotext(infotext).seed if infotext else 0
    except InfotextError:
        return 0


def cmd_upscalers(args) -> int:
    from .paths import DataHome
    from .upscale import list_upscalers, upscaler_problems
    from .upscale.latent import LATENT_UPSCALE_MODES

    home = DataHome.resolve(args.home)
    print("image upscalers (brushwork upscale --upscaler NAME, generate --hires-upscaler NAME):")
    for u in list_upscalers(home):
        if u.kind == "builtin":
            print(f"  {u.name:<28} built in")
        else:
            print(f"  {u.name:<28} {u.architecture or '?'} {u.scale}x  {u.path}")
    print("latent modes (generate --hires-upscaler NAME; resize the latents, no VAE round trip):")
    for name in LATENT_UPSCALE_MODES:
        print(f"  {name}")
    for problem in upscaler_problems(home):
        print(f"note: {problem}", file=sys.stderr)
    folders = ", ".join(str(d) for d in home.upscaler_dirs[:3])
    print(f"upscaler model files go in {folders} (or models/upscale_models, ComfyUI's folder)", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
