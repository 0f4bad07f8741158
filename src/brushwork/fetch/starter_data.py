"""The starter list: a few well-known models to begin with (``brushwork pull NAME``).

Each entry is a SOURCE ``pull`` accepts.  A sha256 is pinned only where a public
source publishes it (cited next to it); for the others the hash the source itself
publishes when the pull runs (Hugging Face's ``X-Linked-Etag``, civitai's
``hashes.SHA256``) is checked instead.  Sizes are approximate (for the listing and
the disk-space check; the download uses the size the source reports).
"""
from __future__ import annotations

STARTERS = [
    {
        "name": "sd15",
        "label": "Stable Diffusion 1.5 (the baseline SD 1.5 checkpoint)",
        "source": "hf://stable-diffusion-v1-5/stable-diffusion-v1-5/v1-5-pruned-emaonly.safetensors",
        "file_name": "v1-5-pruned-emaonly.safetensors",
        "kind": "checkpoint",
        "family": "sd1",
        "size": 4_265_146_304,
        # sha256 and size: what public download scripts on GitHub pin for this Hugging Face
        # URL (several, independently, with the size 4265146304), and the hash AUTOMATIC1111
        # logs when it loads the file ("Calculating sha256 for .../v1-5-pruned-emaonly.safetensors:
        # 6ce0161689b3..."; "Loading weights [6ce0161689]").  Hugging Face's X-Linked-Etag is
        # compared with it before anything is downloaded.
        "sha256": "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
    },
    {
        "name": "realistic-vision-6",
        "label": "Realistic Vision V6.0 B1 (photographic SD 1.5, fp16)",
        "source": "hf://SG161222/Realistic_Vision_V6.0_B1_noVAE/Realistic_Vision_V6.0_NV_B1_fp16.safetensors",
        "file_name": "Realistic_Vision_V6.0_NV_B1_fp16.safetensors",
        "kind": "checkpoint",
        "family": "sd1",
        "size": 2_130_000_000,  # about 2.13 GB
        "sha256": None,  # no published hash found; Hugging Face's X-Linked-Etag is checked
    },
    {
        "name": "juggernaut-xl-9",
        "label": "Juggernaut XL v9 + RunDiffusion Photo v2 (photographic SDXL)",
        # the same model as civitai 133005 (https://civitai.com/models/133005/juggernaut-xl),
        # from RunDiffusion's Hugging Face repository, which needs no account
        "source": "hf://RunDiffusion/Juggernaut-XL-v9/Juggernaut-XL_v9_RunDiffusionPhoto_v2.safetensors",
        "file_name": "Juggernaut-XL_v9_RunDiffusionPhoto_v2.safetensors",
        "kind": "checkpoint",
        "family": "sdxl",
        "size": 7_110_000_000,  # about 7.11 GB
        "sha256": None,  # no published hash found; Hugging Face's X-Linked-Etag is checked
    },
    {
        "name": "sdxl-vae-fp16-fix",
        "label": "SDXL VAE, fp16 fix (madebyollin): decodes SDXL in half precision without NaNs",
        "source": "hf://madebyollin/sdxl-vae-fp16-fix/sdxl_vae.safetensors",
        "file_name": "sdxl_vae.safetensors",
        "kind": "vae",
        "family": "sdxl",
        "size": 334_640_000,  # about 335 MB
        # sha256: SwarmUI's registry of known models verifies the download of this URL against
        # it (github.com/mcmonkeyprojects/SwarmUI, src/Text2Image/CommonModels.cs, "sdxl-vae").
        "sha256": "235745af8d86bf4a4c1b5b4f529868b37019a10f7c0b2e79ad0abca3a22bc6e1",
    },
    {
        "name": "detail-tweaker",
        "label": "Detail Tweaker LoRA (SD 1.5): more or less detail, <lora:add_detail:0.5> or negative",
        "source": "urn:air:sd1:lora:civitai:58390@62833",  # https://civitai.com/models/58390
        "file_name": "add_detail.safetensors",
        "kind": "lora",
        "family": "sd1",
        "size": 37_900_000,  # about 38 MB
        "sha256": None,  # civitai's published hashes.SHA256 is checked
    },
    {
        "name": "detail-tweaker-xl",
        "label": "Detail Tweaker XL LoRA (SDXL)",
        "source": "urn:air:sdxl:lora:civitai:122359@135867",  # https://civitai.com/models/122359
        "file_name": "add-detail-xl.safetensors",
        "kind": "lora",
        "family": "sdxl",
        "size": 228_000_000,  # about 228 MB
        "sha256": None,  # civitai's published hashes.SHA256 is checked
    },
    {
        "name": "sdxl-offset-noise",
        "label": "SDXL offset-noise example LoRA (Stability AI): deeper darks and brighter lights",
        "source": "hf://stabilityai/stable-diffusion-xl-base-1.0/sd_xl_offset_example-lora_1.0.safetensors",
        "file_name": "sd_xl_offset_example-lora_1.0.safetensors",
        "kind": "lora",
        "family": "sdxl",
        "size": 49_600_000,  # about 50 MB
        "sha256": None,  # no published hash found; Hugging Face's X-Linked-Etag is checked
    },
]
