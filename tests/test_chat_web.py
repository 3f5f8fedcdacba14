"""vlmkit chat --web in a real headless browser (Debian's Chromium driven by playwright): upload an image, ask, watch
the reply stream in; a slider changes the next generation; a non-image upload is a message in the page."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, free_port
from test_chat import QUESTION, color_images  # noqa: F401  (the fixture)

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import Error, sync_playwright

    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found (Debian: apt-get install chromium; .ci/run installs it when root)")
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        except Error as e:
            pytest.skip(f"{CHROMIUM} cannot be launched: {str(e).splitlines()[0]}")
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(quickstart_run: dict, tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    log = tmp_path_factory.mktemp("web") / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "tools/chat.py"), "--run", str(quickstart_run["out"]),
                                 "--web", "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                assert time.time() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


#: Records every text the last reply bubble shows, so the test sees the reply grow.
WATCH_REPLY = """() => { window.replyTexts = []; const h = document.querySelector('#chat-history');
  new MutationObserver(() => { const bots = h.querySelectorAll('.message.bot, .bot');
    if (bots.length) window.replyTexts.push(bots[bots.length - 1].innerText.trim()); })
  .observe(h, {subtree: true, childList: true, characterData: true}); }"""


def status(page) -> str:
    return page.inner_text("#chat-status")


def upload(page, path: Path, expect: str) -> None:
    page.locator("#chat-upload input[type=file]").set_input_files(str(path))
    page.wait_for_function("t => document.querySelector('#chat-status').innerText.includes(t)", arg=expect,
                           timeout=30_000)


def ask(page, question: str, n_replies: int) -> str:
    """Ask and wait until the n-th reply is complete; returns its text."""
    page.fill("#chat-question textarea", question)
    page.click("#chat-send")
    page.wait_for_function("n => document.querySelector('#chat-status').innerText.includes(`reply ${n} generated`)",
                           arg=n_replies, timeout=60_000)
    return page.locator("#chat-history .bot").nth(n_replies - 1).inner_text().strip()


def set_slider(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    page.wait_for_function(f"() => document.querySelector('#{elem_id} input[type=range]').value == '{value}'",
                           timeout=10_000)


def test_web_chat_in_a_browser(browser, server: str, color_images: list, tmp_path: Path) -> None:  # noqa: F811
    (first, a), (second, b) = color_images
    page = browser.new_page()
    page.goto(server)
    page.wait_for_selector("#chat-upload input[type=file]", state="attached", timeout=60_000)
    upload(page, first, "image attached: image.png (32x32)")
    page.evaluate(WATCH_REPLY)
    assert ask(page, QUESTION, 1) == f"The answer is {a}."
    grown = [t for t in dict.fromkeys(page.evaluate("window.replyTexts")) if t]
    partial = [t for t in grown if f"The answer is {a}.".startswith(t) and t != f"The answer is {a}."]
    assert len(partial) >= 2, grown  # the reply appeared piece by piece
    assert "max_new_tokens=8" in status(page)

    set_slider(page, "chat-max-new-tokens", 2)  # the next reply is generated with 2 new tokens
    assert ask(page, QUESTION, 2) == "The answer"
    assert "max_new_tokens=2" in status(page)
    set_slider(page, "chat-max-new-tokens", 8)

    not_image = tmp_path / "report.png"
    not_image.write_text("a text file, not a picture")
    upload(page, not_image, "report.png is not an image")
    assert "error" in status(page)
    # the page still works after the bad upload; a new conversation about another image gets another answer
    page.click("#chat-reset")
    page.wait_for_function("() => document.querySelector('#chat-status').innerText.includes('forgotten') && "
                           "document.querySelectorAll('#chat-history .bot').length == 0", timeout=30_000)
    upload(page, second, "image attached")
    assert ask(page, QUESTION, 1) == f"The answer is {b}."
    page.close()


def test_a_host_other_than_loopback_is_warned_about(quickstart_run: dict) -> None:
    # 192.0.2.1 (TEST-NET-1) belongs to no machine: the warning comes before the model loads, then binding fails
    res = subprocess.run([sys.executable, str(REPO / "tools/chat.py"), "--run", str(quickstart_run["out"]), "--web",
                          "--host", "192.0.2.1", "--port", str(free_port())], capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("warning: --host 192.0.2.1 serves the chat to every machine"), res.stderr
    assert res.returncode != 0 and lines[-1].startswith("error: ") and "Traceback" not in res.stderr, res.stderr
