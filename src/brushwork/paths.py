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

HOME is ``--home``, else ``$BRUSHWORK_HOME``, else the platform's data folder.
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

    @property
    def checkpoint_dirs(self) -> list[Path]:
        return self._dirs("models/checkpoints", "models/Stable-diffusion")

    @property
    def lora_dirs(self) -> list[Path]:
        return self._dirs("models/loras", "models/Lora")

    @property
    def vae_dirs(self) -> list[Path]:
        return self._dirs("models/vae", "models/VAE")

    @property
    def embedding_dirs(self) -> list[Path]:
        return self._dirs("models/embeddings", "embeddings")

    @property
    def upscaler_dirs(self) -> list[Path]:
        """Upscaler model files (ESRGAN, Real-ESRGAN, SwinIR ... read through spandrel):
        ours first, then AUTOMATIC1111's folder names, then ComfyUI's."""
        return self._dirs("models/upscalers", "models/ESRGAN", "models/RealESRGAN", "models/SwinIR", "models/DAT", "models/HAT", "models/upscale_models")

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
        """Create the main folders (never touching anything already there)."""
        for d in (self.checkpoint_dirs[0], self.lora_dirs[0], self.vae_dirs[0], self.embedding_dirs[0], self.upscaler_dirs[0], self.outputs, self.cache):
            d.mkdir(parents=True, exist_ok=True)


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
