"""The web studio's Compare panel in a real browser: headless Chromium driven by
Playwright against a real ``brushwork serve`` on the tiny SD 1.x checkpoint.  Skipped
with a reason when Playwright or Chromium is missing."""
from __future__ import annotations

import json

import pytest

from test_web_refine import server  # noqa: F401 - the same studio server fixture
from test_web_studio import CHROMIUM, browser, pixels, playwright, pytestmark, small_settings, studio_page  # noqa: F401 - fixture and skip marks shared


@pytest.fixture
def page(browser, server):
    with studio_page(browser, server[0], {"compares": "/api/v1/compare"}) as pg:  # pg.compares: the bodies POSTed there
        yield pg


def set_axis(pg, key: str, label: str, values: str) -> None:
    if not pg.evaluate("() => document.getElementById('compare').open"):
        pg.click("#compare summary")
    pg.select_option(f"#compare_{key}_type", label)
    if label != "Nothing":  # "Nothing" disables its values field
        pg.fill(f"#compare_{key}", values)


def test_a_steps_by_cfg_grid_fills_in_and_a_cell_loads_its_settings(page):
    small_settings(page, "a lighthouse at dusk", steps=5)
    page.fill("#seed", "11")
    page.locator("#cfg_scale").fill("9")
    set_axis(page, "x", "Steps", "2,3")
    set_axis(page, "y", "CFG Scale", "4,7")
    seen = []  # how many cells had a picture at each change: the grid fills in one by one
    page.expose_function("reportCells", lambda n: seen.append(n))
    page.evaluate("""() => new MutationObserver(() => window.reportCells(document.querySelectorAll('#compare-tables td img').length))
        .observe(document.getElementById('compare-tables'), {childList: true, subtree: true})""")
    page.click("#compare-run")
    page.wait_for_selector("#compare-grid-link:not([hidden])", timeout=120_000)

    body = page.compares[-1]
    assert body["x"] == "Steps: 2,3" and body["y"] == "CFG Scale: 4,7" and "z" not in body
    assert body["batch_size"] == 1 and body["batch_count"] == 1 and body["width"] == 64 and body["seed"] == 11
    assert 1 in seen and max(seen) == 4, seen  # cell by cell, not all at once at the end

    table = page.locator("#compare-tables table")
    assert table.count() == 1
    assert page.locator("#compare-tables thead th[scope=col]").all_inner_texts() == ["2", "3"]
    assert page.locator("#compare-tables tbody th[scope=row]").all_inner_texts() == ["4", "7"]
    assert page.locator("#compare-tables tbody tr").count() == 2
    for iy in range(2):
        assert page.locator(f"#compare-tables tbody tr:nth-child({iy + 1}) td").count() == 2
        for ix in range(2):
            src = page.get_attribute(f"#compare-tables td[data-x='{ix}'][data-y='{iy}'] img", "src")
            assert src and src.startswith("/api/v1/images/")
            assert pixels(page, src).shape == (64, 64, 3)
    assert page.inner_text("#progress-text") == "Done"

    # the grid picture: linked and shown as the result
    grid_src = page.get_attribute("#compare-grid-link", "href")
    assert grid_src.startswith("/api/v1/images/")
    assert page.get_attribute("#image", "src") == grid_src
    assert pixels(page, grid_src).shape[1] >= 128  # two 64 px columns (plus a legend)

    # each cell's picture carries its own values: clicking one loads them into the form
    cell_src = page.get_attribute("#compare-tables td[data-x='1'][data-y='0'] img", "src")
    page.click("#compare-tables td[data-x='1'][data-y='0'] button")
    page.wait_for_function("() => document.getElementById('steps').value === '3' && document.getElementById('cfg_scale').value === '4'", timeout=15_000)
    assert page.get_attribute("#image", "src") == cell_src
    assert "Steps: 3" in page.inner_text("#params") and "CFG scale: 4" in page.inner_text("#params")
    page.click("#compare-tables td[data-x='0'][data-y='1'] button")
    page.wait_for_function("() => document.getElementById('steps').value === '2' && document.getElementById('cfg_scale').value === '7'", timeout=15_000)
    assert page.input_value("#seed") == "11" and page.input_value("#prompt") == "a lighthouse at dusk"


def test_a_bad_axis_value_shows_the_servers_message_beside_that_axis(page):
    small_settings(page, "a fox", steps=2)
    set_axis(page, "x", "Steps", "2-x")
    set_axis(page, "y", "Nothing", "")
    page.click("#compare-run")
    page.wait_for_function("() => document.getElementById('compare_x-error').textContent.length > 0")
    msg = page.inner_text("#compare_x-error")
    assert "Steps" in msg and "2-x" in msg, msg
    assert page.get_attribute("#compare_x", "aria-invalid") == "true"
    assert page.inner_text("#form-error") == "" and page.inner_text("#compare_y-error") == ""
    # typing clears it; a bad Y goes beside Y
    page.fill("#compare_x", "2,3")
    assert page.inner_text("#compare_x-error") == ""
    set_axis(page, "y", "CFG Scale", "4,abc")
    page.click("#compare-run")
    page.wait_for_function("() => document.getElementById('compare_y-error').textContent.length > 0")
    assert "abc" in page.inner_text("#compare_y-error") and page.inner_text("#compare_x-error") == ""
    # an axis without values is caught before anything is sent
    n = len(page.compares)
    set_axis(page, "y", "Seed", "")
    page.click("#compare-run")
    assert "Seed" in page.inner_text("#compare_y-error") and len(page.compares) == n


def test_sampler_chips_fill_the_values_and_the_axes_survive_a_reload(page):
    set_axis(page, "x", "Sampler", "")
    chips = page.locator("#compare_x-choices button")
    assert chips.count() >= 2
    names = chips.all_inner_texts()
    chips.nth(0).click()
    chips.nth(1).click()
    chips.nth(0).click()  # already there: not twice
    assert page.input_value("#compare_x") == f"{names[0]},{names[1]}"
    set_axis(page, "y", "Checkpoint name", "")
    assert "tiny-sd1" in page.locator("#compare_y-choices button").all_inner_texts()
    assert page.locator("#compare_z-choices").is_hidden()
    set_axis(page, "z", "Seed", "1-3")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.evaluate("() => document.getElementById('compare').open")
    assert page.input_value("#compare_x_type") == "Sampler" and page.input_value("#compare_x") == f"{names[0]},{names[1]}"
    assert page.input_value("#compare_y_type") == "Checkpoint name"
    assert page.input_value("#compare_z_type") == "Seed" and page.input_value("#compare_z") == "1-3"
    assert page.locator("#compare_x-choices button").count() == len(names)


def test_phone_width_with_a_wide_grid_has_no_horizontal_scroll(browser, server):
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True)
    pg = ctx.new_page()
    pg.goto(server[0] + "/")
    pg.wait_for_selector("body[data-ready=true]")
    small_settings(pg, "a tree", steps=1)
    set_axis(pg, "x", "Seed", "1-6")
    set_axis(pg, "y", "Nothing", "")
    set_axis(pg, "z", "Nothing", "")
    pg.click("#compare-run")
    pg.wait_for_selector("#compare-grid-link:not([hidden])", timeout=120_000)
    assert pg.locator("#compare-tables thead th[scope=col]").all_inner_texts() == ["1", "2", "3", "4", "5", "6"]
    assert pg.locator("#compare-tables td img").count() == 6
    assert pg.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    ctx.close()


def test_variation_seed_fields_are_sent_recorded_and_restored(page):
    from test_web_studio import generate_and_wait

    small_settings(page, "a lighthouse", steps=3)
    page.fill("#seed", "21")
    page.click("#variation summary")
    page.fill("#subseed", "8")
    page.fill("#subseed_strength", "0.3")
    bodies = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data)) if r.method == "POST" and r.url.endswith("/api/v1/jobs") else None)
    shown = generate_and_wait(page)
    assert bodies[-1]["subseed"] == 8 and bodies[-1]["subseed_strength"] == 0.3
    assert "Variation seed: 8, Variation seed strength: 0.3" in shown["params"]
    # reuse settings of the picture brings them back after they were changed
    page.fill("#subseed", "-1")
    page.fill("#subseed_strength", "0")
    page.click("#reuse-settings")
    page.wait_for_function("() => document.getElementById('subseed').value === '8'")
    assert page.input_value("#subseed_strength") == "0.3"


def test_seed_options_and_margin_are_sent_and_kept(page):
    small_settings(page, "a fox", steps=2)
    page.fill("#seed", "40")
    set_axis(page, "x", "CFG Scale", "4,7")
    set_axis(page, "y", "Nothing", "")
    page.check("#compare_vary_x")
    page.fill("#compare_margin", "6")
    page.click("#compare-run")
    page.wait_for_selector("#compare-grid-link:not([hidden])", timeout=120_000)
    body = page.compares[-1]
    assert body["vary_seeds"] == [True, False, False] and body["keep_random_seeds"] is False and body["margin"] == 6
    # the cells count the seed up along X, and the grid has the margin between them
    seeds = [page.get_attribute(f"#compare-tables td[data-x='{i}'][data-y='0'] button", "title") for i in range(2)]
    assert "seed 40" in seeds[0] and "seed 41" in seeds[1], seeds
    assert pixels(page, page.get_attribute("#compare-grid-link", "href")).shape[1] >= 2 * 64 + 6
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.is_checked("#compare_vary_x") and not page.is_checked("#compare_vary_y") and page.input_value("#compare_margin") == "6"
