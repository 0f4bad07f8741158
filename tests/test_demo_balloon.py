"""The demo LoRA: the balloon world, the detector, and the shipped balloon LoRA on the demo model."""
import numpy as np

from brushwork.demo import balloon, scenes


def test_every_balloon_scene_is_detected_and_no_plain_scene_is():
    with_balloon = [balloon.make_balloon_example(i)[0] for i in range(40)]
    plain = [scenes.make_example(10**6 + i)[0] for i in range(200)]
    assert all(balloon.has_balloon(img) for img in with_balloon)
    assert not any(balloon.has_balloon(img) for img in plain)


def test_captions_name_the_balloon_and_the_dataset_is_deterministic(tmp_path):
    img_a, cap_a = balloon.make_balloon_example(7)
    img_b, cap_b = balloon.make_balloon_example(7)
    assert np.array_equal(img_a, img_b) and cap_a == cap_b and "balloon" in cap_a
    folder = balloon.write_dataset(tmp_path / "ds", 3)
    assert sorted(p.name for p in folder.iterdir()) == ["0000.png", "0000.txt", "0001.png", "0001.txt", "0002.png", "0002.txt"]


def test_the_shipped_balloon_lora_teaches_the_demo_model_a_balloon(tmp_path, capsys):
    from brushwork import Engine
    from brushwork.lora import lora_files

    eng = Engine(tmp_path / "home", device="cpu")
    assert lora_files(eng.home)["balloon"].parent.name == "loras"  # found without installing anything
    assert lora_files(eng.home)["balloon"].stat().st_size <= 2 * 2**20
    eng.load("demo")
    rates = balloon.balloon_rates(eng, range(2000, 2020))
    with capsys.disabled():
        print(f"\nballoon in {rates[1.0]:.0%} of 20 seeds at weight 1, {rates[0.0]:.0%} at weight 0")
    assert rates[1.0] >= 0.8 and rates[0.0] <= 0.1
