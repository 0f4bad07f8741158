"""``brushwork doctor``: what Brushwork runs on and what it finds, and for each
problem what it means and how to fix it.

:func:`checks` is pure given a :class:`Probe` (the machine: torch build, GPUs,
memory, disk) and the data home's files, so tests simulate any machine; the real
probe is :func:`probe_system`.  Each :class:`Finding` has a level: ``ok`` (all
well, for the record), ``warn`` (works, but may bite) or ``problem`` (something does
not work, or works far worse than it could); the command exits 1 when any problem
is found, else 0.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .paths import DataHome

GIB = 2**30
LEVELS = ("ok", "warn", "problem")

#: free disk on the data home's drive below which pictures and downloads fail / get tight
DISK_PROBLEM_BYTES = 2 * GIB
DISK_WARN_BYTES = 10 * GIB
#: memory below which SD 1.x / SDXL struggle
RAM_WARN_TOTAL = 8 * GIB
RAM_WARN_FREE = 3 * GIB
VRAM_WARN_TOTAL = 4 * GIB
VRAM_WARN_FREE = 2 * GIB

#: PyTorch's CUDA wheel indexes, newest first: (CUDA major, minor, index name)
CUDA_WHEELS = ((13, 0, "cu130"), (12, 9, "cu129"), (12, 8, "cu128"), (12, 6, "cu126"), (12, 4, "cu124"), (12, 1, "cu121"), (11, 8, "cu118"))
DEFAULT_CUDA_WHEEL = "cu126"  # runs on any driver of the CUDA 12 era


@dataclass(frozen=True)
class Finding:
    level: str  # "ok" | "warn" | "problem"
    topic: str
    message: str
    fix: str = ""


@dataclass(frozen=True)
class Gpu:
    name: str
    total_bytes: int
    free_bytes: Optional[int] = None


@dataclass(frozen=True)
class Probe:
    """What the machine is (everything :func:`checks` asks the system)."""

    torch_version: str = "?"
    cuda_build: Optional[str] = None  # torch.version.cuda: None for a CPU-only build
    hip_build: Optional[str] = None  # torch.version.hip (AMD ROCm builds)
    cuda_available: bool = False
    gpus: tuple = ()  # Gpu, as torch sees them
    nvidia_driver: bool = False  # nvidia-smi on PATH or /proc/driver/nvidia present
    nvidia_names: tuple = ()  # GPU names nvidia-smi reports (also when torch cannot see them)
    driver_cuda: Optional[str] = None  # "12.4": the newest CUDA the driver supports (nvidia-smi)
    mps_available: bool = False
    cpu_cores: int = 1
    ram_total: int = 0
    ram_free: int = 0
    disk_free: Optional[int] = None  # of the data home's drive
    disk_total: Optional[int] = None
    torchvision_problem: Optional[str] = None
    device_label: str = "cpu (float32)"  # where Brushwork runs by default
    python: str = field(default_factory=lambda: sys.executable or "python")


# ------------------------------------------------------------------ the real machine


def _nearest_existing(path: Path) -> Path:
    p = Path(path)
    while not p.exists() and p.parent != p:
        p = p.parent
    return p


def _run(cmd: list[str]) -> Optional[str]:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def probe_system(home: DataHome) -> Probe:
    """The real machine (runs nvidia-smi when it is on PATH)."""
    import psutil
    import torch

    from .devices import choose_placement
    from .runtime import torchvision_problem, usable_cores

    gpus = []
    available = torch.cuda.is_available()
    if available:
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            try:
                free = int(torch.cuda.mem_get_info(i)[0])
            except RuntimeError:
                free = None
            gpus.append(Gpu(props.name, int(props.total_memory), free))
    smi = shutil.which("nvidia-smi")
    names: tuple = ()
    driver_cuda = None
    if smi:
        listed = _run([smi, "--query-gpu=name", "--format=csv,noheader"])
        names = tuple(line.strip() for line in (listed or "").splitlines() if line.strip())
        m = re.search(r"CUDA Version:\s*([0-9]+\.[0-9]+)", _run([smi]) or "")
        driver_cuda = m.group(1) if m else None
    vm = psutil.virtual_memory()
    try:
        disk = shutil.disk_usage(_nearest_existing(home.root))
        disk_free, disk_total = int(disk.free), int(disk.total)
    except OSError:
        disk_free = disk_total = None
    mps = getattr(torch.backends, "mps", None)
    try:
        label = choose_placement(None).label
    except Exception:  # noqa: BLE001 - a broken device is reported by the checks
        label = "cpu (float32)"
    return Probe(
        torch_version=torch.__version__, cuda_build=torch.version.cuda, hip_build=getattr(torch.version, "hip", None),
        cuda_available=available, gpus=tuple(gpus), nvidia_driver=bool(smi) or Path("/proc/driver/nvidia").exists(),
        nvidia_names=names, driver_cuda=driver_cuda, mps_available=bool(mps and mps.is_available()), cpu_cores=usable_cores(),
        ram_total=int(vm.total), ram_free=int(vm.available), disk_free=disk_free, disk_total=disk_total,
        torchvision_problem=torchvision_problem(), device_label=label,
    )


# ------------------------------------------------------------------ device and torch


def _gib(n: Optional[int]) -> str:
    return "?" if n is None else f"{n / GIB:.1f} GiB"


def cuda_wheel(driver_cuda: Optional[str]) -> str:
    """The newest PyTorch CUDA wheel index the driver can run ("cu124" for a driver
    that supports CUDA 12.4); the CUDA 12 default when the driver's is unknown."""
    if not driver_cuda:
        return DEFAULT_CUDA_WHEEL
    try:
        major, minor = (int(x) for x in driver_cuda.split(".")[:2])
    except ValueError:
        return DEFAULT_CUDA_WHEEL
    for ma, mi, name in CUDA_WHEELS:
        if (ma, mi) <= (major, minor):
            return name
    return CUDA_WHEELS[-1][2]


def cuda_install_line(p: Probe) -> str:
    """The pip line that puts a CUDA build of the same torch into this Python."""
    version = p.torch_version.split("+")[0]
    return f"{p.python} -m pip install --force-reinstall torch=={version} --index-url https://download.pytorch.org/whl/{cuda_wheel(p.driver_cuda)}"


def _gpu_names(p: Probe) -> str:
    names = [g.name for g in p.gpus] or list(p.nvidia_names)
    return ", ".join(names) if names else "an NVIDIA GPU"


def device_findings(p: Probe) -> list[Finding]:
    build = f"torch {p.torch_version}" + (f" (CUDA {p.cuda_build})" if p.cuda_build else f" (ROCm {p.hip_build})" if p.hip_build else " (CPU-only build)")
    if p.cuda_available and p.gpus:
        gpus = "; ".join(f"{g.name}, {_gib(g.total_bytes)}" + (f" ({_gib(g.free_bytes)} free)" if g.free_bytes is not None else "") for g in p.gpus)
        return [Finding("ok", "device", f"{build}; GPU: {gpus}. Brushwork runs on {p.device_label}.")]
    if p.nvidia_driver and p.cuda_build is None and p.hip_build is None:
        return [Finding(
            "problem", "device",
            f"{_gpu_names(p)} is in this machine, but the installed {build} cannot use it, so Brushwork runs on the CPU, "
            "typically 10 to 50 times slower.",
            f"install the CUDA build of the same torch into Brushwork's Python: {cuda_install_line(p)}"
            + (f" (the driver supports CUDA {p.driver_cuda})" if p.driver_cuda else " (nvidia-smi's 'CUDA Version' says which cuXYZ index the driver can run)")
            + ". If torchvision is installed, reinstall it from the same index at once (docs/upscalers.md).",
        )]
    if p.nvidia_driver and p.cuda_build and not p.cuda_available:
        driver = f"the driver supports CUDA {p.driver_cuda}" if p.driver_cuda else "nvidia-smi did not report the driver's CUDA version (is the driver loaded?)"
        return [Finding(
            "problem", "device",
            f"{build} is built for CUDA but sees no usable GPU although {_gpu_names(p)} is present ({driver}): usually the driver is older than "
            f"CUDA {p.cuda_build} needs, or the GPU is not passed into this container. Brushwork runs on the CPU meanwhile.",
            f"update the NVIDIA driver to one for CUDA {p.cuda_build} or newer, or install a torch built for the driver's CUDA: {cuda_install_line(p)}. "
            "In a container, start it with the GPU (docker run --gpus all).",
        )]
    if p.cuda_available:  # ROCm, or CUDA without a listed device
        return [Finding("ok", "device", f"{build}; Brushwork runs on {p.device_label}.")]
    if p.mps_available:
        return [Finding("ok", "device", f"{build}; Apple GPU (Metal). Brushwork runs on {p.device_label}.")]
    return [Finding("ok", "device", f"{build}; no GPU found, so Brushwork runs on the CPU ({p.cpu_cores} cores): an SD 1.x picture at 512 px "
                    "takes a minute or more, the built-in demo model and small sizes are quick.")]


def memory_findings(p: Probe) -> list[Finding]:
    out = []
    ram = f"RAM: {_gib(p.ram_free)} free of {_gib(p.ram_total)}"
    if p.ram_total and p.ram_total < RAM_WARN_TOTAL:
        out.append(Finding("warn", "memory", f"{ram}. SD 1.x fits; SDXL needs about 8 GiB and will swap or fail.",
                           "use SD 1.x checkpoints, close other programs, or add memory."))
    elif p.ram_free < RAM_WARN_FREE:
        out.append(Finding("warn", "memory", f"{ram}: other programs hold most of it, so loading a checkpoint may swap or fail.",
                           "close other programs (a browser with many tabs, another Stable Diffusion UI) before generating."))
    else:
        out.append(Finding("ok", "memory", f"{ram}."))
    for g in p.gpus:
        vram = f"VRAM of {g.name}: {_gib(g.free_bytes)} free of {_gib(g.total_bytes)}"
        if g.total_bytes < VRAM_WARN_TOTAL:
            out.append(Finding("warn", "memory", f"{vram}. SD 1.x fits at 512 px; SDXL and large sizes will not.", "use SD 1.x checkpoints and sizes near 512 px."))
        elif g.free_bytes is not None and g.free_bytes < VRAM_WARN_FREE:
            out.append(Finding("warn", "memory", f"{vram}: another program holds most of it.", "close other GPU programs (another Stable Diffusion UI, a game) or check nvidia-smi for what runs."))
        else:
            out.append(Finding("ok", "memory", f"{vram}."))
    return out


def disk_findings(home: DataHome, p: Probe) -> list[Finding]:
    where = f"the data home's disk ({home.root})"
    if p.disk_free is None:
        return [Finding("warn", "disk", f"the free space on {where} could not be read.", "check that the folder (or its drive) is reachable.")]
    text = f"{_gib(p.disk_free)} free on {where}"
    tips = "free some space, move the data home to a bigger disk (--home or BRUSHWORK_HOME), or link the model folders of an existing install instead of copying them (brushwork models link PATH)."
    if p.disk_free < DISK_PROBLEM_BYTES:
        return [Finding("problem", "disk", f"only {text}: a checkpoint is 2-7 GB and downloads will not fit; saving pictures may fail.", tips)]
    if p.disk_free < DISK_WARN_BYTES:
        return [Finding("warn", "disk", f"{text}: room for a checkpoint or two at most.", tips)]
    return [Finding("ok", "disk", f"{text}.")]


def torchvision_findings(p: Probe) -> list[Finding]:
    if not p.torchvision_problem:
        return []
    message, _, fix = p.torchvision_problem.partition(" Fix: ")
    return [Finding("problem", "torchvision", message, fix or "pip uninstall torchvision, or install the pair that matches torch (docs/upscalers.md).")]


# ------------------------------------------------------------------ the data home and its models


def home_findings(home: DataHome) -> list[Finding]:
    root = home.root
    if not root.exists():
        return [Finding("warn", "data home", f"{root} does not exist yet.", "any brushwork command creates it, e.g. brushwork models (or pass --home / set BRUSHWORK_HOME for another place).")]
    if not root.is_dir():
        return [Finding("problem", "data home", f"{root} is a file, not a folder.", "move that file away, or choose another data home with --home or BRUSHWORK_HOME.")]
    if not os.access(root, os.W_OK):
        return [Finding("problem", "data home", f"{root} is not writable: pictures, settings and downloads cannot be saved.", f"give yourself write access (e.g. sudo chown -R $USER {root}) or choose another data home with --home.")]
    return [Finding("ok", "data home", f"{root}.")]


def folder_findings(home: DataHome) -> list[Finding]:
    """Each model kind's folders (own, then linked) with the files found; links whose
    install is not there any more; a damaged links file."""
    from .links import KIND_LABELS, KINDS, LinkError, count_files, read_links

    out = []
    try:
        links = read_links(home)
    except LinkError as exc:
        links = []
        out.append(Finding("problem", "links", f"the links to other installs cannot be read: {exc}", f"fix {home.links_file} by hand, or delete it and link again (brushwork models link PATH)."))
    for kind in KINDS:
        own = [d for d in home.own_dirs(kind) if d.is_dir()] or home.own_dirs(kind)[:1]
        parts = [f"{d} ({count_files(d, kind)} files)" if d.is_dir() else f"{d} (not created yet)" for d in own]
        for link in links:
            for d in link.existing(kind):
                parts.append(f"{d} ({count_files(d, kind)} files, linked)")
        out.append(Finding("ok", "folders", f"{KIND_LABELS[kind]}: " + "; ".join(parts) + "."))
    for link in links:
        if not any(link.existing(kind) for kind in KINDS):
            out.append(Finding("warn", "links", f"the linked {link.label} at {link.path} is not there now (moved, deleted, or its drive is not mounted); its models are skipped.",
                               f"reconnect it, or forget it: brushwork models unlink {link.path}"))
    return out


def checkpoint_findings(home: DataHome) -> list[Finding]:
    from .catalog import is_demo, summarize
    from .links import linked_install_of

    rows = summarize(home, with_hash=False)
    out = []
    usable = [r for r in rows if not r.family.startswith("unusable")]
    for r in rows:
        if not r.family.startswith("unusable"):
            continue
        why = r.family.removeprefix("unusable:").strip()
        link = linked_install_of(home, r.entry.path)
        fix = ("it belongs to the linked install at " + str(link.path) + ": download it again there, or remove it there (Brushwork never changes a linked install)." if link is not None else
               "download it again (a download cut short or a full disk leaves such files), or move it out of the checkpoints folder. Brushwork skips it meanwhile.")
        out.append(Finding("problem", "checkpoints", f"{r.entry.path} cannot be used: {why}", fix))
    own = [r for r in usable if not is_demo(r.entry.path)]
    add = (f"put a .safetensors checkpoint (SD 1.x, SD 2.x or SDXL) into {home.own_dirs('checkpoints')[0]}, link an existing install "
           "(brushwork models link ~/stable-diffusion-webui), or download one (brushwork pull; brushwork models --starter lists some).")
    if own:
        families = sorted({r.family for r in own})
        out.append(Finding("ok", "checkpoints", f"{len(own)} usable checkpoint(s): {', '.join(families)}."))
    elif usable:
        out.append(Finding("warn", "checkpoints", "no checkpoints of your own: only the built-in demo model (small pictures of simple scenes) can be used.", add))
    else:
        out.append(Finding("problem", "checkpoints", "no usable checkpoint at all: nothing can be generated.", add))
    return out


def settings_findings(home: DataHome) -> list[Finding]:
    from .model_defaults import ModelDefaultsError, _read

    try:
        _read(home)
    except ModelDefaultsError as exc:
        return [Finding("warn", "model defaults", f"the saved model defaults are ignored: {exc}", f"fix {home.model_defaults_file} by hand, or delete it and save them again (brushwork models set NAME ...).")]
    return []


def checks(home: DataHome, probe: Optional[Probe] = None) -> list[Finding]:
    """Every finding, in the order they are shown: device and torch, memory, disk,
    the data home, its model folders, the checkpoints, torchvision, saved settings."""
    p = probe if probe is not None else probe_system(home)
    return [
        *device_findings(p), *memory_findings(p), *disk_findings(home, p), *home_findings(home),
        *folder_findings(home), *checkpoint_findings(home), *torchvision_findings(p), *settings_findings(home),
    ]


# ------------------------------------------------------------------ showing them

TAGS = {"ok": "ok", "warn": "WARN", "problem": "PROBLEM"}


def format_findings(findings: list[Finding], width: int = 100) -> list[str]:
    """The findings as lines: a tag, the topic and message (wrapped at ``width``), the
    fix indented below on one line; a summary last."""
    lines = []
    for f in findings:
        head = f"{TAGS[f.level]:<8} {f.topic}: {f.message}"
        lines += textwrap.wrap(head, width, subsequent_indent=" " * 9, break_on_hyphens=False, break_long_words=False)
        if f.fix:  # one line, so a command in it can be copied whole
            lines.append(f"{'':<8} fix: {f.fix}")
    problems = sum(f.level == "problem" for f in findings)
    warnings = sum(f.level == "warn" for f in findings)
    if problems:
        lines.append(f"{problems} problem(s), {warnings} warning(s): the fix lines above say what to do.")
    elif warnings:
        lines.append(f"No problems; {warnings} warning(s) above.")
    else:
        lines.append("No problems found.")
    return lines
