"""The data home: where models are found and images are written.

Layout (AUTOMATIC1111's folder names are accepted as well)::

    HOME/models/checkpoints   (or models/Stable-diffusion)
    HOME/models/loras         (or models/Lora)
    HOME/models/vae           (or models/VAE)
    HOME/models/embeddings    (or embeddings)
    HOME/models/upscalers     (or models/ESRGAN, RealESRGAN, SwinIR, DAT, HAT, upscale_models)
    HOME/outputs
    HOME/inputs               (every init image and mask a refine started from, by hash)
    HOME/cache
    HOME/styles.csv           (saved prompt styles)
    HOME/model-defaults.json  (each model's own defaults: model_defaults.py)
    HOME/links.json           (linked AUTOMATIC1111/ComfyUI installs: links.py)

HOME is ``--home``, else ``$BRUSHWORK_HOME``, else the platform's data folder.

Every ``*_dirs`` list holds Brushwork's own folders first, then the existing folders
of the linked installs (``brushwork models link``), so every lookup sees those files
where they are; ``create`` makes only Brushwork's own.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path


def platform_home() -> Path:
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        return base / "Brushwork"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "Brushwork"
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "brushwork"


@dataclass(frozen=True)
class DataHome:
    root: Path

    @classmethod
    def resolve(cls, home: str | os.PathLike | None = None) -> "DataHome":
        chosen = home or os.environ.get("BRUSHWORK_HOME") or platform_home()
        return cls(Path(chosen).expanduser().resolve())

    def _dirs(self, *names: str) -> list[Path]:
        return [self.root / n for n in names]

    def _with_links(self, own: list[Path], kind: str) -> list[Path]:
        """``own`` then the linked installs' existing folders of ``kind`` (links.py;
        the links file is re-read only when it changes)."""
        from .links import linked_folders

        return own + [d for d in linked_folders(self, kind) if d not in own]

    def own_dirs(self, kind: str) -> list[Path]:
        """Brushwork's own folders of ``kind`` ("checkpoints", "loras", "vae",
        "embeddings", "upscalers"), without the linked ones."""
        return self._dirs(*_OWN_DIRS[kind])

    @property
    def checkpoint_dirs(self) -> list[Path]:
        return self._with_links(self.own_dirs("checkpoints"), "checkpoints")

    @property
    def lora_dirs(self) -> list[Path]:
        return self._with_links(self.own_dirs("loras"), "loras")

    @property
    def vae_dirs(self) -> list[Path]:
        return self._with_links(self.own_dirs("vae"), "vae")

    @property
    def text_encoder_dirs(self) -> list[Path]:
        """Text-encoder files of their own (Flux's clip_l and t5xxl): ours, Forge's and
        ComfyUI's folder names, then the linked installs'."""
        return self._with_links(self.own_dirs("text_encoders"), "text_encoders")

    @property
    def embedding_dirs(self) -> list[Path]:
        return self._with_links(self.own_dirs("embeddings"), "embeddings")

    @property
    def upscaler_dirs(self) -> list[Path]:
        """Upscaler model files (ESRGAN, Real-ESRGAN, SwinIR ... read through spandrel):
        ours first, then AUTOMATIC1111's folder names, then ComfyUI's, then the linked installs'."""
        return self._with_links(self.own_dirs("upscalers"), "upscalers")

    @property
    def links_file(self) -> Path:
        """The linked installs (links.py)."""
        return self.root / "links.json"

    @property
    def model_defaults_file(self) -> Path:
        """Each model's saved defaults (model_defaults.py)."""
        return self.root / "model-defaults.json"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    @property
    def inputs(self) -> Path:
        """The pictures and masks img2img / inpaint started from, named by their hash
        (the infotext's "Init image hash"), so a result can be re-created."""
        return self.root / "inputs"

    @property
    def styles_file(self) -> Path:
        """Saved prompt styles, in AUTOMATIC1111's styles.csv format."""
        return self.root / "styles.csv"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def create(self) -> None:
        """Create the main folders (never touching anything already there, and never
        anything in a linked install)."""
        for kind in _OWN_DIRS:
            self.own_dirs(kind)[0].mkdir(parents=True, exist_ok=True)
        for d in (self.outputs, self.cache):
            d.mkdir(parents=True, exist_ok=True)


#: Brushwork's own model folders (AUTOMATIC1111's and ComfyUI's names accepted too)
_OWN_DIRS = {
    "checkpoints": ("models/checkpoints", "models/Stable-diffusion", "models/diffusion_models", "models/unet"),
    "loras": ("models/loras", "models/Lora"),
    "vae": ("models/vae", "models/VAE"),
    "embeddings": ("models/embeddings", "embeddings"),
    "text_encoders": ("models/text_encoders", "models/text_encoder", "models/clip"),
    "upscalers": ("models/upscalers", "models/ESRGAN", "models/RealESRGAN", "models/SwinIR", "models/DAT", "models/HAT", "models/upscale_models"),
}


def files_by_stem(folders: list[Path], suffixes: tuple[str, ...], fold_case: bool = False) -> dict[str, Path]:
    """Files with one of ``suffixes`` below ``folders`` (recursive), keyed by file stem
    (lower-cased if ``fold_case``); the first folder, then name order, wins a clash."""
    found: dict[str, Path] = {}
    for folder in folders:
        if folder.is_dir():
            for p in sorted(folder.rglob("*")):
                if p.is_file() and p.suffix.lower() in suffixes:
                    found.setdefault(p.stem.lower() if fold_case else p.stem, p)
    return found


def write_json_atomically(path: Path, value, sort_keys: bool = False) -> None:
    """Write ``value`` as JSON to ``path`` through a temporary file in the same folder,
    so readers see the old file or the new one, never half of it.  Raises OSError
    (the caller turns it into its own message); the temporary file never stays."""
    import json
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(value, stream, indent=2, sort_keys=sort_keys)
            stream.write("\n")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise

