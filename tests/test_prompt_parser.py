"""The prompt syntax, table-driven: every construct and the malformed cases."""
import pytest

from brushwork.prompts import BREAK_WEIGHT, extract_extra_networks, parse_attention, schedule_prompt, split_and

W11, W121, W1331, D = 1.1, 1.1 * 1.1, 1.1**3, 1 / 1.1


def approx_runs(runs):
    return [(t, pytest.approx(w)) for t, w in runs]


@pytest.mark.parametrize(
    "prompt, expected",
    [
        # the reference vector confirmed against AUTOMATIC1111
        (r"a (b) ((c)) [d] (e:1.3) \(f\)", [("a ", 1), ("b", W11), (" ", 1), ("c", W121), (" ", 1), ("d", D), (" ", 1), ("e", 1.3), (" (f)", 1)]),
        ("plain text", [("plain text", 1)]),
        ("", [("", 1)]),
        ("(((x)))", [("x", W1331)]),
        ("[[x]]", [("x", D * D)]),
        ("(a [b] c)", [("a ", W11), ("b", W11 * D), (" c", W11)]),
        ("(masterpiece:1.2), best", [("masterpiece", 1.2), (", best", 1)]),
        ("(x: 0.5 )", [("x", 0.5)]),
        ("((x:1.5))", [("x", 1.5 * W11)]),
        ("(x:-1)", [("x", -1)]),
        ("(unbalanced", [("unbalanced", W11)]),
        ("[unbalanced", [("unbalanced", D)]),
        ("a ) b ]", [("a ) b ]", 1)]),
        (r"\[x\] \\ \y", [(r"[x] \ \y", 1)]),
        ("a: b", [("a: b", 1)]),
        ("a BREAK b", [("a", 1), ("BREAK", BREAK_WEIGHT), ("b", 1)]),
        ("(a BREAK b)", [("a", W11), ("BREAK", BREAK_WEIGHT * W11), ("b", W11)]),
        ("aBREAKb BREAKING break", [("aBREAKb BREAKING break", 1)]),
        ("a BREAK BREAK b", [("a", 1), ("BREAK", BREAK_WEIGHT), ("BREAK", BREAK_WEIGHT), ("b", 1)]),
    ],
)
def test_emphasis(prompt, expected):
    assert parse_attention(prompt) == approx_runs([(t, float(w)) for t, w in expected])


@pytest.mark.parametrize("prompt", ["x (y:1.2.3) z", "((((", "))))", "(:)", "[:]", "(x:)", "(x:abc)", "\\", "(" * 500 + "x", "[a:b:c:d:e]"])
def test_malformed_emphasis_never_crashes_and_keeps_the_words(prompt):
    runs = parse_attention(prompt)
    text = "".join(t for t, _ in runs)
    for word in ("x", "y", "z", "abc"):
        if word in prompt:
            assert word in text


@pytest.mark.parametrize(
    "prompt, steps, expected",
    [
        ("a [cat:dog:0.5]", 20, [(10, "a cat"), (20, "a dog")]),
        ("a [cat::5]", 20, [(5, "a cat"), (20, "a ")]),
        ("a [dog:5]", 20, [(5, "a "), (20, "a dog")]),
        ("a [cat:dog:8]", 4, [(4, "a cat")]),  # the switch is capped at the step count
        ("a [cat:dog:0.25] [x:y:0.5]", 8, [(2, "a cat x"), (4, "a dog x"), (8, "a dog y")]),
        ("[fe|]male", 4, [(1, "female"), (2, "male"), (3, "female"), (4, "male")]),
        ("[a|b|c]", 4, [(1, "a"), (2, "b"), (3, "c"), (4, "a")]),
        ("(a [b:c:3]:1.2)", 6, [(3, "(a b:1.2)"), (6, "(a c:1.2)")]),
        ("[[a:b:2]:c:4]", 6, [(2, "a"), (4, "b"), (6, "c")]),
        ("[[a]:c:4]", 6, [(4, "[a]"), (6, "c")]),
        ("no editing here", 10, [(10, "no editing here")]),
        (r"escaped \[a:b:3\]", 10, [(10, r"escaped \[a:b:3\]")]),
        ("[emphasis only]", 10, [(10, "[emphasis only]")]),
        # malformed: the whole prompt, unchanged, for every step
        ("a [b:c", 10, [(10, "a [b:c")]),
        ("a [b:c:d]", 10, [(10, "a [b:c:d]")]),
        ("a (b", 10, [(10, "a (b")]),
        ("[a:b|c:3]", 10, [(10, "[a:b|c:3]")]),
    ],
)
def test_prompt_editing_and_alternation(prompt, steps, expected):
    assert schedule_prompt(prompt, steps) == expected


def test_schedule_needs_steps():
    with pytest.raises(ValueError, match="at least 1"):
        schedule_prompt("x", 0)


def test_deep_nesting_falls_back_instead_of_crashing():
    deep = "[" * 3000 + "x"
    assert schedule_prompt(deep, 5) == [(5, deep)]


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("a cat", [("a cat", 1.0)]),
        ("a cat AND a dog", [("a cat", 1.0), (" a dog", 1.0)]),
        ("a cat :1.2 AND a dog: 0.5", [("a cat", 1.2), (" a dog", 0.5)]),
        ("sand AND", [("sand", 1.0), ("", 1.0)]),
        ("ANDROID and ANDes", [("ANDROID and ANDes", 1.0)]),
        ("x:-0.5", [("x", -0.5)]),
    ],
)
def test_and(prompt, expected):
    assert split_and(prompt) == expected


def test_extra_network_tags_are_removed_and_read():
    r = extract_extra_networks("a car <lora:porsche_911:0.8>, <lora:style:0.5:1> <lyco:x:te=0.2:unet=0.7:dyn=8> <hypernet:h:0.3> <lora:plain>")
    assert r.text == "a car ,    "
    assert r.warnings == []
    got = [(n.kind, n.name, n.te, n.unet, n.dyn) for n in r.networks]
    assert got == [
        ("lora", "porsche_911", 0.8, 0.8, None),
        ("lora", "style", 0.5, 1.0, None),
        ("lora", "x", 0.2, 0.7, 8),
        ("hypernet", "h", 0.3, 0.3, None),
        ("lora", "plain", 1.0, 1.0, None),
    ]


@pytest.mark.parametrize(
    "prompt, warning",
    [
        ("<lora:bad:abc>", "the weight 'abc' is not a number"),
        ("<lora:bad:1:x>", "the UNet weight 'x' is not a number"),
        ("<lora:bad:inf>", "must be a finite number"),
        ("<lora: :1>", "no name given"),
    ],
)
def test_bad_tags_warn_and_are_dropped(prompt, warning):
    r = extract_extra_networks("a " + prompt + " b")
    assert r.networks == [] and r.text == "a  b"
    assert len(r.warnings) == 1 and warning in r.warnings[0]


def test_not_a_tag_is_left_alone():
    r = extract_extra_networks("a <3 heart, x > y, <lora> <:x>")
    assert r.text == "a <3 heart, x > y, <lora> <:x>" and r.networks == []
