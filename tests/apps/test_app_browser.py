"""Start the app on a free local port and drive it in headless Chromium (Playwright): upload, generate,
paint, link, look, each with its result checked. Without Playwright or a Chromium it falls back to
gradio's own client for the upload and generate steps; skipped (with the reason) when neither works."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the app needs the `app` extra: pip install -e '.[app]'")

from amlight.apps import app_logic as A  # noqa: E402
from amlight.apps import app_ui as U  # noqa: E402
from amlight.apps.inputs import LabelSpace  # noqa: E402
from helpers.app_scenes import tiny_checkpoints, write_scene  # noqa: E402


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    folder = tmp_path_factory.mktemp("app")
    s1, adapter = tiny_checkpoints(folder / "model")
    pipe, space = A.load_model(stage1=s1, adapter=adapter, data="synthetic")
    demo = U.build_app(pipe, space, steps=2)
    port = U.launch(demo, block=False)
    files = write_scene(folder / "files", space.metadata)
    yield f"http://127.0.0.1:{port}/", files, folder
    demo.close()


def _upload(page, elem: str, path) -> None:
    """Upload a file through a File component, as a user would: its button opens the file chooser."""
    with page.expect_file_chooser() as chooser:
        page.locator(f"#{elem} button").first.click()
    chooser.value.set_files(str(path))
    page.locator(f"#{elem}").get_by_text(Path(str(path)).stem).first.wait_for(timeout=30_000)


def _status(page, contains: str, timeout: float = 60_000) -> str:
    page.wait_for_function(
        "(want) => { const t = document.querySelector('#status textarea'); return t && t.value.includes(want); }",
        arg=contains, timeout=timeout)
    return page.locator("#status textarea").input_value()


def _image(page, elem: str) -> np.ndarray:
    """The picture an Image component shows, as decoded pixels (fetched from the app like the browser)."""
    src = page.locator(f"#{elem} img").first.get_attribute("src")
    data = page.request.get(src if src.startswith("http") else page.url.rstrip("/") + "/" + src.lstrip("/")).body()
    import io

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _click(page, elem: str, row: int, col: int, size: int = 16) -> None:
    """Click pixel (row, col) of the label map shown (scaled) in an Image component."""
    img = page.locator(f"#{elem} img").first
    img.wait_for()
    box = img.bounding_box()
    img.click(position={"x": (col + 0.5) * box["width"] / size, "y": (row + 0.5) * box["height"] / size})


def test_app_in_a_browser(app):
    url, (image_file, labels_file), folder = app
    chromium = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or chromium is None:
        _drive_with_client(url, image_file, labels_file, why=f"playwright={sync_playwright is not None}, chromium={chromium}")
        return
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        outside = []
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(("http://127.0.0.1", "data:", "blob:")) else None)
        page.goto(url, wait_until="load")
        page.wait_for_selector("#gen_btn", timeout=60_000)

        # Upload: the exemplar and its labels.
        _upload(page, "ex_image_file", str(image_file))
        _upload(page, "ex_labels_file", str(labels_file))
        page.click("#load_btn")
        _status(page, "inputs loaded")
        assert _image(page, "ex_view").std() > 0

        # A corrupt target upload: one line in the status box, no trace.
        bad = folder / "broken.png"
        bad.write_bytes(b"not an image")
        _upload(page, "tgt_file", str(bad))
        page.click("#load_btn")
        text = _status(page, "Error")
        assert text.startswith("Error: target label map broken.png: ") and "corrupt" in text
        assert "Traceback" not in text and "\n" not in text and "/tmp" not in text

        # The target = the exemplar's labels, shown in the dataset's colours.
        page.click("#same_btn")
        _status(page, "target = the exemplar's labels")
        shown = _image(page, "tgt_view")
        colours = LabelSpace.resolve("synthetic").metadata.colors
        assert shown.shape[0] >= 16 and tuple(shown[0, 0]) == tuple(colours[0])

        # Generate.
        page.click("#gen_btn")
        _status(page, "generated (adapter, 2 steps")
        result = _image(page, "result")
        assert result.shape[0] >= 16 and result.std() > 0

        # Edit: paint a car (class 5) onto the sky, regenerate.
        page.get_by_role("tab", name="Edit").click()
        _select_class(page, "5 car")
        _click(page, "edit_view", 3, 8)
        _status(page, "painted 5 car at (3, 8)")
        edited = _image(page, "edit_view")
        car = colours[5]
        scale = edited.shape[0] // 16
        assert tuple(edited[3 * scale + scale // 2, 8 * scale + scale // 2]) == tuple(car)
        page.click("#regen_btn")
        _status(page, "generated (adapter")
        assert _image(page, "edit_result").std() > 0

        # Link: the left car of the exemplar to the right car of the target.
        page.get_by_role("tab", name="Link").click()
        _click(page, "link_ex", 11, 3)
        _status(page, "exemplar region: car at (11, 3)")
        _click(page, "link_tgt", 11, 12)
        _status(page, "1 link(s)")
        page.click("#link_btn")
        _status(page, "generated with 1 link(s)")
        assert _image(page, "link_result").std() > 0

        # Look: a target pixel's attention over the exemplar.
        page.get_by_role("tab", name="Look").click()
        _click(page, "look_view", 11, 3)
        _status(page, "attention of (11, 3)")
        look_text = page.locator("#look_text textarea").input_value()
        assert "hard_mask: down 1.00" in look_text and "augmented" in look_text
        assert _image(page, "look_panel").shape[1] > 5 * 16
        browser.close()
    assert outside == [], f"the app fetched from outside: {outside[:3]}"


def _select_class(page, name: str) -> None:
    box = page.get_by_label("class", exact=True)
    box.click()
    page.get_by_role("option", name=name).click()


def _drive_with_client(url, image_file, labels_file, why: str) -> None:
    """Upload and generate through gradio's client (the clicks of Edit / Link / Look need a browser;
    tests/apps/test_app_logic.py covers their functions)."""
    try:
        from gradio_client import Client, handle_file
    except ImportError:
        pytest.skip(f"neither a browser ({why}) nor gradio_client is available")
    client = Client(url, verbose=False)
    out = client.predict(handle_file(str(image_file)), handle_file(str(labels_file)), None, api_name="/use_files")
    assert out[-1] == "inputs loaded"
    assert client.predict(api_name="/same_labels")[-1].startswith("target = the exemplar's labels")
    image, status = client.predict("augmented", 2, "ddim", 3.0, 1.0, 0, api_name="/run")
    assert status.startswith("generated (augmented, 2 steps") and np.asarray(Image.open(image)).std() > 0
    bad = Path(str(image_file)).with_name("broken.png")
    bad.write_bytes(b"not an image")
    out = client.predict(handle_file(str(image_file)), handle_file(str(labels_file)), handle_file(str(bad)),
                         api_name="/use_files")
    assert out[-1].startswith("Error: target label map broken.png") and "Traceback" not in out[-1]
    print(f"no browser ({why}): drove upload and generate through gradio_client")


def test_client_fallback_uploads_and_generates(app):
    url, (image_file, labels_file), _ = app
    _drive_with_client(url, image_file, labels_file, why="forced by this test")
