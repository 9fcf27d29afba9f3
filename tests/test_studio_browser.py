"""End to end in headless Chromium: `ipsolve studio --model embedded` on a free port, driven by Selenium.

Restore: upload a digit, start a 4x5 restore, Stop after two previews: the answer and the download are the
latest preview. Generate: keep one candidate after the first outer step; the next candidates come from
it. A text file renamed .png: one message on the page, the server still answers. Inpainting: a stroke of
the mask brush across the clean digit is what the measurement misses. Prints the time from Start to the
first preview on screen and from Stop to idle; screenshots go to a temporary folder, or to
docs/images/studio_*.png with IPSOLVE_SCREENSHOTS=docs/images (how the README's pictures are made).

Needs Debian's chromium and chromium-driver (.ci/run installs them); skipped with a reason only where
they are absent, never in CI (CI set).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ipsolve.imageio import load_image

ROOT = Path(__file__).resolve().parents[1]
DIGIT = ROOT / "ipsolve" / "examples" / "digit_clean.png"
# screenshots: into a temporary folder, or (IPSOLVE_SCREENSHOTS=docs/images) into the docs, on purpose only
SHOTS = Path(os.environ.get("IPSOLVE_SCREENSHOTS") or tempfile.mkdtemp(prefix="studio-shots-"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

if not (CHROMIUM and DRIVER):
    if os.environ.get("CI"):
        pytest.fail("CI must run the browser test: install chromium and chromium-driver (.ci/run does)",
                    pytrace=False)
    pytest.skip("headless Chromium is absent: apt-get install -y chromium chromium-driver", allow_module_level=True)
if os.environ.get("CI"):  # CI installs both (requirements.txt): a missing one is a failure there
    import gradio  # noqa: F401
    import selenium.webdriver as webdriver
else:
    pytest.importorskip("gradio", reason="the studio extra is not installed: pip install -e '.[studio]'")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[test]'")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from PIL import Image  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

WAIT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def wait_for(condition, what, timeout=WAIT_S, poll=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    log = open(runs / "server.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "ipsolve", "studio", "--model", "embedded", "--port", str(port),
                                "--runs", str(runs)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=runs)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for(lambda: answers(url) or process.poll() is not None, "the studio to answer", poll=0.5)
        assert process.poll() is None, (runs / "server.log").read_text()
        yield url, runs, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(server):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1700"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        driver.get(server[0])
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#restore-start"), "the page")
        yield driver
    finally:
        driver.quit()


def text_of(driver, selector) -> str:
    found = driver.find_elements(By.CSS_SELECTOR, selector)
    return found[0].text if found else ""


def set_number(driver, selector, value):
    field = driver.find_element(By.CSS_SELECTOR, f"{selector} input")
    field.clear()
    field.send_keys(str(value))


def upload(driver, selector, path):
    for clear in driver.find_elements(By.CSS_SELECTOR, f"{selector} button[aria-label='Clear']"):
        clear.click()  # drop the earlier file first
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, f"{selector} input[type=file]"), f"{selector}'s drop zone")
    driver.find_element(By.CSS_SELECTOR, f"{selector} input[type=file]").send_keys(str(path))
    wait_for(lambda: Path(path).stem in text_of(driver, selector), f"the upload of {Path(path).name}")


def download(driver, selector) -> bytes:
    link = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, f"{selector} a[download]"), f"{selector}'s link")
    with urllib.request.urlopen(link[0].get_attribute("href"), timeout=30) as response:
        return response.read()


def latest_run(runs: Path, kind: str) -> Path:
    return max(runs.glob(f"{kind}-*"), key=lambda path: path.stat().st_mtime)


def status_has(driver, selector, *words):
    text = text_of(driver, selector)
    return text if any(word in text for word in words) else ""


def test_restore_stop_keeps_the_latest_preview_as_answer_and_download(server, browser, tmp_path):
    url, runs, _ = server
    upload(browser, "#restore-image", DIGIT)
    set_number(browser, "#restore-outer", 4)
    set_number(browser, "#restore-inner", 5)
    # a whole 4x5 run of one sample: Start → first preview on screen, then every preview, then done
    started = time.monotonic()
    browser.find_element(By.CSS_SELECTOR, "#restore-start").click()
    wait_for(lambda: status_has(browser, "#restore-message", "preview 1 at NFE 5", "done:"), "the first preview")
    first_preview_s = time.monotonic() - started
    done = wait_for(lambda: status_has(browser, "#restore-message", "done:", "error"), "the run to end")
    assert done.startswith("done: 4 previews, 20 NFE"), done
    assert "NFE 20 · PSNR" in text_of(browser, "#restore-answer")
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / "studio_restore.png"))

    # the same with 16 samples (slow enough on two cores that Stop lands mid-run), stopped by a script in
    # the page the moment the second preview is on screen; it also times Stop → idle in the page
    set_number(browser, "#restore-samples", 16)
    browser.execute_script("""
        window.stoppedAt = null; window.idleAt = null;
        const status = () => document.querySelector('#restore-message').textContent;
        const timer = setInterval(() => {
            if (window.stoppedAt === null && status().includes('preview 2 at NFE')) {
                document.querySelector('#restore-stop').click(); window.stoppedAt = performance.now();
            }
            if (window.stoppedAt !== null && /stopped|done/.test(status())) {
                window.idleAt = performance.now(); clearInterval(timer);
            }
        }, 2);""")
    browser.find_element(By.CSS_SELECTOR, "#restore-start").click()
    wait_for(lambda: browser.execute_script("return window.idleAt"), "the stopped run to end")
    stop_to_idle_s = browser.execute_script("return (window.idleAt - window.stoppedAt) / 1000")
    status = text_of(browser, "#restore-message")
    print(f"\nstudio timings: Start → first preview on screen {first_preview_s:.2f} s (4x5, one sample), "
          f"Stop → idle {stop_to_idle_s:.2f} s (16 samples)")
    assert status.startswith("stopped after NFE"), status
    run = latest_run(runs, "restore") / "run"
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "interrupted" and 2 <= len(record["previews"]) < 4
    latest = run / record["previews"][-1]["file"]
    assert f"NFE {record['previews'][-1]['nfe']}" in text_of(browser, "#restore-answer")
    assert f"kept preview {record['previews'][-1]['step']}" in status
    # 16 samples: beside the answer, their posterior mean and its per-pixel std (the run's mean.png, std.png)
    assert "posterior mean of 16 samples" in text_of(browser, "#restore-mean")
    for shown, name in (("#restore-mean", "mean.png"), ("#restore-std", "std.png")):
        source = browser.find_element(By.CSS_SELECTOR, f"{shown} img").get_attribute("src")
        assert name in source and (run / name).is_file(), source
    final = tmp_path / "final.png"
    final.write_bytes(download(browser, "#restore-final"))
    assert np.array_equal(load_image(final).numpy(), load_image(latest).numpy())
    archive = tmp_path / "run.zip"
    archive.write_bytes(download(browser, "#restore-archive"))
    with zipfile.ZipFile(archive) as bundle:
        assert json.loads(bundle.read("run/run.json"))["status"] == "interrupted"
        assert bundle.read("run/final.png") == (run / "final.png").read_bytes()
    assert answers(url)
    outside = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)"
                                     ".filter(n => !n.startsWith(location.origin) && !n.startsWith('data:'))")
    assert outside == []  # no fonts, scripts or analytics from anywhere else
    browser.save_screenshot(str(SHOTS / "studio_stopped.png"))


def test_generate_keeps_a_candidate_and_the_next_ones_come_from_it(server, browser, tmp_path):
    _, runs, _ = server
    browser.find_element(By.XPATH, "//button[@role='tab'][contains(., 'Generate')]").click()
    wait_for(lambda: browser.find_element(By.CSS_SELECTOR, "#generate-start").is_displayed(), "the generate tab")
    set_number(browser, "#generate-n", 4)
    set_number(browser, "#generate-outer", 3)
    set_number(browser, "#generate-inner", 4)
    browser.find_element(By.CSS_SELECTOR, "#generate-start").click()
    wait_for(lambda: "outer step 1 of 3" in text_of(browser, "#generate-message"), "the first outer step")
    thumbnails = wait_for(lambda: (lambda found: found if len(found) == 4 else None)(
        browser.find_elements(By.CSS_SELECTOR, "#generate-candidates .thumbnail-item")), "four candidates")
    thumbnails[2].click()  # keep candidate 2
    wait_for(lambda: browser.execute_script(
        "return [...document.querySelectorAll('#generate-keep label')].some("
        "label => label.textContent.trim() === '2' && label.querySelector('input').checked)"),
        "candidate 2 to be kept")
    browser.find_element(By.CSS_SELECTOR, "#generate-continue").click()
    wait_for(lambda: "outer step 2 of 3" in text_of(browser, "#generate-message"), "the second outer step")
    job = latest_run(runs, "generate")
    record = json.loads((job / "run" / "run.json").read_text())
    assert record["feedback"] == [{"step": 1, "keep": [2]}]
    assert json.loads((job / "run" / "picks.json").read_text()) == {"1": [2]}
    # the candidates on screen after step 2 are those of a run that kept candidate 2: the command line,
    # replaying the picks file, draws the same ones; keeping candidate 0 instead draws others
    replay = tmp_path / "replay"
    common = [sys.executable, "-m", "ipsolve", "generate", "--model", "embedded", "--n", "4", "--outer", "3",
              "--inner", "4", "--seed", "0", "--budget", "8", "--quiet"]
    subprocess.run([*common, "--picks", str(job / "run" / "picks.json"), "--out", str(replay)], check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=WAIT_S)
    subprocess.run([*common, "--pick", "1:0", "--out", str(tmp_path / "other")], check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=WAIT_S)
    shown = job / "run" / "preview_02_nfe008.png"
    assert shown.read_bytes() == (replay / "preview_02_nfe008.png").read_bytes()
    assert shown.read_bytes() != (tmp_path / "other" / "preview_02_nfe008.png").read_bytes()
    for i in range(4):  # each candidate on screen is a tile of that preview
        assert (job / "candidates" / "step02" / f"candidate_{i}.png").is_file()
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / "studio_generate.png"))
    browser.find_element(By.CSS_SELECTOR, "#generate-to-end").click()
    wait_for(lambda: text_of(browser, "#generate-message").startswith("done"), "the run to end")


def test_a_text_file_named_png_is_one_message_and_the_server_keeps_running(server, browser, tmp_path):
    url, runs, process = server
    browser.find_element(By.XPATH, "//button[@role='tab'][contains(., 'Restore')]").click()
    wait_for(lambda: browser.find_element(By.CSS_SELECTOR, "#restore-start").is_displayed(), "the restore tab")
    fake = tmp_path / "notes.png"
    fake.write_text("this is a text file, not an image\n")
    before = sorted(runs.glob("restore-*"))
    upload(browser, "#restore-image", fake)
    browser.find_element(By.CSS_SELECTOR, "#restore-start").click()
    message = wait_for(lambda: (lambda text: text if text.startswith("error") else "")(
        text_of(browser, "#restore-message")), "the error message")
    assert "is not a readable image" in message and "\n" not in message.strip()
    assert sorted(runs.glob("restore-*")) == before  # nothing half-written
    assert process.poll() is None and answers(url)
    browser.save_screenshot(str(SHOTS / "studio_error.png"))


def test_tabs_do_not_see_each_others_runs_and_closing_a_tab_stops_its_run(server, browser):
    url, runs, process = server
    mine = browser.current_window_handle
    my_status = text_of(browser, "#restore-message")
    browser.switch_to.new_window("tab")
    try:
        browser.get(url)
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#restore-start"), "the page in a second tab")
        upload(browser, "#restore-image", DIGIT)
        set_number(browser, "#restore-outer", 40)  # long: 40 x 10 NFE of 8 samples
        set_number(browser, "#restore-inner", 10)
        set_number(browser, "#restore-samples", 8)
        browser.find_element(By.CSS_SELECTOR, "#restore-start").click()
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#restore-strip img"), "the first preview")
        run = latest_run(runs, "restore") / "run"
    finally:
        browser.close()  # the second tab goes away mid-run
        browser.switch_to.window(mine)
    closed = time.monotonic()
    record = wait_for(lambda: (lambda r: r if r["status"] != "running" else None)(
        json.loads((run / "run.json").read_text())), "the closed tab's run to stop", timeout=60)
    print(f"\nstudio: the closed tab's run stopped {time.monotonic() - closed:.1f} s after the tab closed")
    assert record["status"] == "interrupted" and record["nfe"] < 400
    assert text_of(browser, "#restore-message") == my_status  # this tab never saw the other's run
    assert process.poll() is None and answers(url)


def test_a_mask_painted_with_the_brush_is_what_the_inpainting_run_misses(server, browser):
    _, runs, _ = server
    browser.find_element(By.XPATH, "//button[@role='tab'][contains(., 'Restore')]").click()
    wait_for(lambda: browser.find_element(By.CSS_SELECTOR, "#restore-start").is_displayed(), "the restore tab")
    browser.find_element(By.CSS_SELECTOR, "#restore-example input").click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#restore-example li[aria-label='digit (clean)']"),
             "the examples")[0].click()
    set_number(browser, "#restore-outer", 1)
    set_number(browser, "#restore-inner", 2)
    set_number(browser, "#restore-samples", 1)
    for settle_s in (1.5, 4.0, 8.0):  # a stroke made before the digit is drawn in the canvas is refused: retry
        before, shown = set(runs.glob("restore-*")), text_of(browser, "#restore-message")
        done = paint_a_stroke_and_start(browser, settle_s, shown)
        if "the painted mask is" not in done:
            break
        choose_task(browser, "deno")  # the brush goes away; a fresh canvas when the task comes back to inp
        wait_for(lambda: not brush_canvases(browser), "the brush to go away")
    assert done.startswith("done: 1 previews, 2 NFE"), done
    (job,) = set(runs.glob("restore-*")) - before
    drawn = np.array(Image.open(job / "input" / "drawn.mask.png"))
    assert drawn.shape == (32, 32)
    missing_rows = sorted(set(np.nonzero(drawn == 0)[0]))
    assert missing_rows and 12 <= missing_rows[0] and missing_rows[-1] <= 20, missing_rows  # none far from the stroke
    middle = missing_rows[len(missing_rows) // 2]
    assert (drawn[middle, 9:23] == 0).all(), drawn[middle]  # missing all along the stroke
    measured = np.array(Image.open(job / "input" / "measurement.mask.png").convert("L"))
    assert np.array_equal(measured, drawn)  # the measurement restored misses exactly the painted pixels


def brush_canvases(browser):
    return [c for c in browser.find_elements(By.CSS_SELECTOR, "#restore-brush .pixi-target canvas") if c.is_displayed()]


def choose_task(browser, name):
    task = browser.find_element(By.CSS_SELECTOR, "#restore-task input")
    task.click()
    task.send_keys(Keys.CONTROL, "a")
    task.send_keys(name, Keys.ENTER)


def paint_a_stroke_and_start(browser, settle_s, shown):
    """Task inp, a stroke across the digit's middle row on the brush's canvas once it has had `settle_s`
    seconds to draw the digit, then Start; the status line once the run ends."""
    choose_task(browser, "inp")
    canvas = wait_for(lambda: brush_canvases(browser), "the brush over the digit (an inpainting task)")[0]
    time.sleep(settle_s)  # the digit is drawn into the canvas just after the canvas appears
    # the digit (32x32) is shown about 190 px wide in the canvas's middle: a stroke along its middle row,
    # from 60 px left of the centre to 60 px right of it, paints about columns 6 to 26
    stroke = ActionChains(browser).move_to_element_with_offset(canvas, -60, 0).click_and_hold()
    for _ in range(4):
        stroke = stroke.move_by_offset(30, 0)
    stroke.release().perform()
    browser.find_element(By.CSS_SELECTOR, "#restore-start").click()
    return wait_for(lambda: text_of(browser, "#restore-message") != shown
                    and status_has(browser, "#restore-message", "done:", "error"), "the run to end")
