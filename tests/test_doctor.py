"""brushwork doctor: the findings on simulated machines and data homes."""
import json
import shutil

import pytest

from brushwork.cli import main
from brushwork.doctor import GIB, Finding, Gpu, Probe, checks, cuda_install_line, cuda_wheel, format_findings
from brushwork.paths import DataHome

HEALTHY = dict(torch_version="2.14.1+cpu", cpu_cores=8, ram_total=32 * GIB, ram_free=20 * GIB, disk_free=200 * GIB, disk_total=500 * GIB, python="/venv/bin/python")


def probe(**changes) -> Probe:
    return Probe(**{**HEALTHY, **changes})


def by_topic(findings, topic):
    return [f for f in findings if f.topic == topic]


@pytest.fixture
def h(home) -> DataHome:
    return DataHome.resolve(home)


def test_a_healthy_cpu_machine_has_no_problem(h):
    findings = checks(h, probe())
    assert all(isinstance(f, Finding) and f.level in ("ok", "warn", "problem") for f in findings)
    assert [f.level for f in findings if f.level != "ok"] == []
    [device] = by_topic(findings, "device")
    assert device.message.startswith("torch 2.14.1+cpu (CPU-only build); no GPU found, so Brushwork runs on the CPU (8 cores)")
    [ckpts] = by_topic(findings, "checkpoints")
    assert ckpts.message == "3 usable checkpoint(s): SD 1.x, SD 2.x (v-prediction), SDXL."
    assert format_findings(findings)[-1] == "No problems found."


def test_an_nvidia_gpu_with_a_cpu_only_torch_says_how_to_install_the_cuda_build(h):
    findings = checks(h, probe(nvidia_driver=True, nvidia_names=("NVIDIA GeForce RTX 3060",), driver_cuda="12.4"))
    [device] = by_topic(findings, "device")
    assert device.level == "problem"
    assert device.message.startswith("NVIDIA GeForce RTX 3060 is in this machine, but the installed torch 2.14.1+cpu (CPU-only build) cannot use it")
    assert "/venv/bin/python -m pip install --force-reinstall torch==2.14.1 --index-url https://download.pytorch.org/whl/cu124" in device.fix
    assert "(the driver supports CUDA 12.4)" in device.fix
    lines = format_findings(findings)
    assert lines[-1] == "1 problem(s), 0 warning(s): the fix lines above say what to do."
    assert any(line.startswith("PROBLEM  device: NVIDIA GeForce RTX 3060") for line in lines)
    assert any(line.strip().startswith("fix: install the CUDA build of the same torch into Brushwork's Python: /venv/bin/python -m pip install") for line in lines)


def test_a_cuda_build_that_cannot_reach_the_gpu(h):
    findings = checks(h, probe(torch_version="2.14.1+cu130", cuda_build="13.0", nvidia_driver=True, driver_cuda="12.2"))
    [device] = by_topic(findings, "device")
    assert device.level == "problem" and "is built for CUDA but sees no usable GPU" in device.message and "the driver supports CUDA 12.2" in device.message
    assert "update the NVIDIA driver to one for CUDA 13.0 or newer" in device.fix and "whl/cu121" in device.fix


def test_a_working_gpu_is_reported_with_its_memory(h):
    gpu = Gpu("NVIDIA H200", 140 * GIB, 130 * GIB)
    findings = checks(h, probe(torch_version="2.14.1+cu130", cuda_build="13.0", cuda_available=True, gpus=(gpu,), nvidia_driver=True, device_label="cuda (float16)"))
    [device] = by_topic(findings, "device")
    assert device.level == "ok" and device.message == "torch 2.14.1+cu130 (CUDA 13.0); GPU: NVIDIA H200, 140.0 GiB (130.0 GiB free). Brushwork runs on cuda (float16)."
    vram = [f for f in by_topic(findings, "memory") if "VRAM" in f.message]
    assert [(f.level, f.message) for f in vram] == [("ok", "VRAM of NVIDIA H200: 130.0 GiB free of 140.0 GiB.")]


def test_small_or_busy_vram_and_ram_are_warnings(h):
    findings = checks(h, probe(cuda_build="12.6", cuda_available=True, gpus=(Gpu("GTX 1050", 2 * GIB, 2 * GIB), Gpu("RTX 4090", 24 * GIB, 1 * GIB)), ram_total=6 * GIB, ram_free=4 * GIB))
    memory = by_topic(findings, "memory")
    assert [f.level for f in memory] == ["warn", "warn", "warn"]
    assert "SDXL needs about 8 GiB" in memory[0].message
    assert "SDXL and large sizes will not" in memory[1].message and "another program holds most of it" in memory[2].message


@pytest.mark.parametrize("free, level", [(int(0.5 * GIB), "problem"), (5 * GIB, "warn"), (50 * GIB, "ok")])
def test_disk_space_of_the_data_home(h, free, level):
    [disk] = by_topic(checks(h, probe(disk_free=free)), "disk")
    assert disk.level == level and str(h.root) in disk.message
    if level != "ok":
        assert "brushwork models link PATH" in disk.fix and "--home" in disk.fix


def test_no_checkpoints_of_ones_own(tmp_path):
    empty = DataHome.resolve(tmp_path / "empty")
    findings = checks(empty, probe())
    [ckpts] = by_topic(findings, "checkpoints")
    assert ckpts.level == "warn" and "only the built-in demo model" in ckpts.message
    assert str(empty.root / "models" / "checkpoints") in ckpts.fix and "brushwork models link" in ckpts.fix and "brushwork pull" in ckpts.fix
    [home] = by_topic(findings, "data home")
    assert home.level == "warn" and "does not exist yet" in home.message
    assert not empty.root.exists()  # the doctor looks, it does not create


def test_nothing_at_all_to_generate_with(tmp_path, monkeypatch):
    import brushwork.catalog

    monkeypatch.setattr(brushwork.catalog, "PACKAGED_DEMO", tmp_path / "no-demo.safetensors")
    [ckpts] = by_topic(checks(DataHome.resolve(tmp_path / "h"), probe()), "checkpoints")
    assert ckpts.level == "problem" and ckpts.message == "no usable checkpoint at all: nothing can be generated."


def test_a_damaged_checkpoint_is_a_problem_with_a_fix(h):
    broken = h.root / "models" / "checkpoints" / "half-download.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    ckpts = by_topic(checks(h, probe()), "checkpoints")
    bad = [f for f in ckpts if f.level == "problem"]
    assert len(bad) == 1 and bad[0].message.startswith(f"{broken} cannot be used: ")
    assert "download it again" in bad[0].fix
    assert ckpts[-1].message.startswith("3 usable checkpoint(s)")


def test_model_folders_with_counts_own_and_linked(h, tiny_home, tmp_path):
    webui = tmp_path / "webui"
    (webui / "models" / "Stable-diffusion").mkdir(parents=True)
    shutil.copy(tiny_home / "models" / "checkpoints" / "tiny-sd1.safetensors", webui / "models" / "Stable-diffusion" / "a.safetensors")
    shutil.copy(tiny_home / "models" / "checkpoints" / "tiny-sd1.safetensors", webui / "models" / "Stable-diffusion" / "b.ckpt")
    from brushwork.links import add_link

    add_link(h, webui)
    folders = by_topic(checks(h, probe()), "folders")
    [ck] = [f for f in folders if f.message.startswith("checkpoints:")]
    assert ck.message == f"checkpoints: {h.root / 'models' / 'checkpoints'} (3 files); {webui / 'models' / 'Stable-diffusion'} (2 files, linked)."
    [lo] = [f for f in folders if f.message.startswith("LoRAs:")]
    assert lo.message == f"LoRAs: {h.root / 'models' / 'loras'} (not created yet)."
    shutil.rmtree(webui)
    [gone] = by_topic(checks(h, probe()), "links")
    assert gone.level == "warn" and f"the linked AUTOMATIC1111/Forge install at {webui} is not there now" in gone.message
    assert gone.fix == f"reconnect it, or forget it: brushwork models unlink {webui}"


def test_a_torchvision_mismatch_and_damaged_settings(h):
    text = "the installed torchvision does not work with torch 2.14.1 (operator torchvision::nms does not exist). Brushwork itself does not need torchvision. Fix: pip uninstall torchvision."
    (h.root / "model-defaults.json").write_text("[]")
    (h.root / "links.json").write_text("nope")
    findings = checks(h, probe(torchvision_problem=text))
    [tv] = by_topic(findings, "torchvision")
    assert (tv.level, tv.fix) == ("problem", "pip uninstall torchvision.") and tv.message.endswith("does not need torchvision.")
    [links] = by_topic(findings, "links")
    assert links.level == "problem" and "links.json is not valid JSON" in links.message
    [saved] = by_topic(findings, "model defaults")
    assert saved.level == "warn" and "has no \"models\" object" in saved.message


def test_cuda_wheel_for_a_driver():
    assert [cuda_wheel(v) for v in ("13.1", "12.8", "12.7", "12.4", "12.2", "11.8", "11.4", None, "junk")] == ["cu130", "cu128", "cu126", "cu124", "cu121", "cu118", "cu118", "cu126", "cu126"]
    assert cuda_install_line(probe(torch_version="2.13.0+cpu", driver_cuda="12.9")) == "/venv/bin/python -m pip install --force-reinstall torch==2.13.0 --index-url https://download.pytorch.org/whl/cu129"


def test_the_command_prints_findings_and_exits_1_on_a_problem(home, capsys, monkeypatch):
    import brushwork.doctor

    monkeypatch.setattr(brushwork.doctor, "probe_system", lambda h: probe())
    assert main(["doctor", "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("ok       device: torch 2.14.1+cpu") and out.splitlines()[-1] == "No problems found."
    monkeypatch.setattr(brushwork.doctor, "probe_system", lambda h: probe(disk_free=GIB // 4))
    assert main(["doctor", "--home", str(home)]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM  disk: only 0.2 GiB free on the data home's disk" in out


def test_the_real_machine_is_probed_without_error(home):
    from brushwork.doctor import probe_system

    p = probe_system(DataHome.resolve(home))
    assert p.torch_version and p.ram_total > 0 and p.disk_free is not None
    findings = checks(DataHome.resolve(home), p)
    assert by_topic(findings, "device") and json.dumps([f.__dict__ for f in findings])
