"""The web page of `phenaki serve` (jobs/static/) in a real headless chromium against a real local Serve app:
the story editor, a job followed through its events to a playing video, cancel, the server's error messages,
and the gallery kept in the browser."""

from __future__ import annotations

import json

import pytest
import requests

from tests.browser_helpers import chromium, until
from tests.serve_helpers import free_port

pytestmark = [pytest.mark.ray, pytest.mark.slow]

MAX_STEPS = 5000
# A debug model at 64 px has 320 tokens a clip, so a segment runs at most 320 steps whatever `steps` says (one
# token a step at least): a few milliseconds each, so a two-prompt story takes a couple of seconds, long enough
# to watch its progress and to cancel a four-prompt one while it runs.
SIZE = 64
STORY = ["a red circle moving left", "a blue square moving up"]


@pytest.fixture(scope="module")
def url(ray_local, tmp_path_factory):
    from jobs.serving.app import start, stop
    from modeling.generation import write_debug_checkpoint

    ckpt = write_debug_checkpoint(
        tmp_path_factory.mktemp("page") / "transformer", image_size=SIZE, sampling={"steps": 4}
    )
    base = start(ckpt, host="127.0.0.1", port=free_port(), limits={"max_prompts": 4, "max_steps": MAX_STEPS})
    yield base
    stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    yield from chromium(tmp_path_factory.mktemp("chromium-profile"), window="1280,1000")


@pytest.fixture
def page(browser, url):
    """The page, fresh, with its model card loaded and an empty gallery."""
    browser.get(url + "/")
    browser.execute_script("localStorage.clear()")
    browser.get(url + "/")
    until(browser, "document.getElementById('model').textContent.startsWith('Phenaki')")
    return browser


def by_id(driver, element_id: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def rows(driver):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#prompts > li")


def prompt_values(driver) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#prompts .prompt')].map(p => p.value)"
    )


def click_in_row(driver, index: int, button: str) -> None:
    from selenium.webdriver.common.by import By

    rows(driver)[index].find_element(By.CSS_SELECTOR, f"button.{button}").click()


def set_value(driver, element_id: str, value) -> None:
    field = by_id(driver, element_id)
    field.clear()
    field.send_keys(str(value))


def write_story(driver, prompts: list[str]) -> None:
    from selenium.webdriver.common.by import By

    for i, prompt in enumerate(prompts):
        if i >= len(rows(driver)):
            by_id(driver, "add-prompt").click()
        field = rows(driver)[i].find_element(By.CSS_SELECTOR, ".prompt")
        field.clear()
        field.send_keys(prompt)


def status(driver) -> dict:
    return driver.execute_script(
        "const s = document.getElementById('status');"
        "return {status: s.dataset.status, job: s.dataset.job, text: s.textContent,"
        " progress: document.getElementById('progress').value}"
    )


def test_story_editor_generate_progress_and_play(page, url):
    red, blue = STORY
    assert prompt_values(page) == [""] and by_id(page, "add-prompt").is_enabled()
    write_story(page, [red, blue])
    assert prompt_values(page) == [red, blue]
    click_in_row(page, 1, "up")
    assert prompt_values(page) == [blue, red]
    assert not rows(page)[0].find_element("css selector", ".up").is_enabled()
    click_in_row(page, 0, "down")
    assert prompt_values(page) == [red, blue]
    click_in_row(page, 1, "remove")
    assert prompt_values(page) == [red]
    write_story(page, [red, blue])
    assert prompt_values(page) == [red, blue]
    assert [r.find_element("css selector", ".prompt").get_attribute("aria-label") for r in rows(page)] == [
        "Prompt 1",
        "Prompt 2",
    ]

    set_value(page, "steps", 3000)
    # Every value the progress bar takes, recorded by the page as it changes (no polling gaps).
    page.execute_script(
        "window.seen = []; const p = document.getElementById('progress');"
        "new MutationObserver(() => seen.push([p.value, document.getElementById('status').dataset.status]))"
        ".observe(p, {attributes: true, attributeFilter: ['value']});"
    )
    by_id(page, "generate").click()
    until(page, "document.getElementById('status').dataset.status === 'succeeded'", timeout=60)
    seen = page.execute_script("return seen")
    running = [value for value, state in seen if state == "running" and 0 < value < 1]
    assert any(a < b for a, b in zip(running, running[1:], strict=False)), seen
    assert seen[-1][0] == 1
    job_id = status(page)["job"]
    assert "Done" in status(page)["text"] and "13 frames" in status(page)["text"]

    # The video plays: the browser decoded the H.264 the server encoded (the 64 px debug model).
    video = until(
        page,
        "(v => v.tagName === 'VIDEO' && v.readyState >= 2 && v.duration > 0 && "
        "[v.videoWidth, v.duration, v.src])(document.getElementById('player'))",
    )
    assert video[0] == SIZE and video[1] == pytest.approx(13 / 8, abs=0.2) and video[2].startswith("blob:")
    caption = by_id(page, "caption").text
    assert f"1. “{red}” (frames 0–8)" in caption and f"2. “{blue}” (frames 9–12)" in caption
    assert not by_id(page, "cancel").is_enabled() and by_id(page, "generate").is_enabled()

    # The gallery holds it, and clicking the entry fetches the video again.
    entries = page.find_elements("css selector", "#gallery li")
    assert len(entries) == 1 and red in entries[0].text and "mp4" in entries[0].text
    stored = json.loads(page.execute_script("return localStorage.getItem('phenaki.gallery')"))
    assert [(e["id"], e["prompts"], e["format"]) for e in stored] == [(job_id, STORY, "mp4")]
    entries[0].find_element("css selector", "button").click()
    until(
        page,
        f"(v => v.readyState >= 2 && v.src !== {json.dumps(video[2])})(document.getElementById('player'))",
    )
    assert by_id(page, "error").text == ""


def test_cancel_a_running_job(page, url):
    write_story(page, [f"{colour} circle" for colour in ("red", "green", "blue", "yellow")])
    set_value(page, "steps", MAX_STEPS)
    assert not by_id(page, "cancel").is_enabled()
    by_id(page, "generate").click()
    until(page, "(s => s.dataset.status === 'running' && document.getElementById('progress').value > 0)"
                "(document.getElementById('status'))")  # fmt: skip
    assert by_id(page, "cancel").is_enabled() and not by_id(page, "generate").is_enabled()
    by_id(page, "cancel").click()
    until(page, "document.getElementById('status').dataset.status === 'cancelled'")
    assert "cancelled" in status(page)["text"].lower()
    job = requests.get(f"{url}/v1/videos/{status(page)['job']}", timeout=10).json()
    assert job["status"] == "cancelled" and job["error"]["code"] == "cancelled", job
    until(page, "document.getElementById('generate').disabled === false")
    assert not by_id(page, "cancel").is_enabled()
    assert page.find_elements("css selector", "#gallery li") == [] and by_id(page, "error").text == ""


def test_gif_shows_as_an_image(page):
    write_story(page, ["a yellow square moving down"])
    page.execute_script("document.getElementById('format').value = 'gif'")
    by_id(page, "generate").click()
    size = until(
        page, "(p => p.tagName === 'IMG' && p.complete && p.naturalWidth)(document.getElementById('player'))"
    )
    assert size == SIZE and status(page)["status"] == "succeeded"
    assert "gif" in page.find_element("css selector", "#gallery li").text


@pytest.mark.parametrize(
    ("story", "field", "value", "message"),
    [
        (["a red circle"], "steps", MAX_STEPS + 1, f"steps: {MAX_STEPS + 1}: at most {MAX_STEPS}"),
        (["a red circle", ""], "steps", 2, "prompts: prompt 1 is empty"),
        (["a red circle"], "seed", -1, "phenaki.seed: Input should be greater than or equal to 0"),
    ],
    ids=["steps-over-limit", "empty-prompt", "negative-seed-422"],
)
def test_bad_input_shows_the_servers_message(page, story, field, value, message):
    write_story(page, story)
    set_value(page, field, value)
    by_id(page, "generate").click()
    text = until(page, "(e => !e.hidden && e.textContent)(document.getElementById('error'))")
    assert message in text, text
    assert status(page)["text"] == "Not submitted." and by_id(page, "generate").is_enabled()


def test_gallery_entry_that_expired_on_the_server(page, url):
    entry = {"id": "0" * 32, "prompts": ["an old one"], "format": "gif", "time": 1_700_000_000_000}
    page.execute_script(f"localStorage.setItem('phenaki.gallery', {json.dumps(json.dumps([entry]))})")
    page.get(url + "/")
    until(page, "document.querySelectorAll('#gallery li').length === 1")
    page.find_element("css selector", "#gallery li button").click()
    text = until(page, "(e => !e.hidden && e.textContent)(document.getElementById('error'))")
    assert "expired" in text and "no job" in text and "404" in text, text
    assert "expired" in page.find_element("css selector", "#gallery li").text
