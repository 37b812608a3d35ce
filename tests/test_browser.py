"""The desk in real headless Chromium (system /usr/bin/chromium, driven by Playwright).

Waits are for concrete elements, never for network idle (a Gradio page keeps an event stream
open). Screenshots of both pages at desktop and phone width go to a temporary folder, so a test
run leaves the work tree as it was: pytest's basetemp, e.g.
/tmp/pytest-of-$USER/pytest-current/screenshots0/ (pytest keeps the last three runs).

The README's screenshot, docs/desk.png, is regenerated only when asked for:

    MADOGUCHI_SCREENSHOT=docs/desk.png python -m pytest tests/test_browser.py -k screenshots

(a path relative to the repository, or absolute): the visitor page at desktop width, after an answer.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from logdb import eventually, query

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
DESKTOP, PHONE = {"width": 1280, "height": 900}, {"width": 390, "height": 844}
TIMEOUT = 20_000  # ms, for any one element


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no {CHROMIUM}: apt-get install -y chromium fonts-noto-cjk")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, desk):
    context = browser.new_context(viewport=DESKTOP, locale="ja-JP")
    page = context.new_page()
    page.set_default_timeout(TIMEOUT)
    page.goto(desk.url)
    page.locator("#desk-question textarea").wait_for()
    yield page
    context.close()


def ask(page, question: str) -> None:
    answers = page.locator("#desk-chat .desk-lead")
    before = answers.count()
    box = page.locator("#desk-question textarea")
    box.fill(question)
    box.press("Enter")
    answers.nth(before).wait_for()


def last_title(page) -> str:
    return page.locator("#desk-chat .desk-title").last.inner_text()


AXE = REPO / ".ci" / "node_modules" / "axe-core" / "axe.min.js"  # npm install --prefix .ci axe-core (.ci/run)
WCAG = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


def accessibility_violations(page) -> list[str]:
    """axe-core's WCAG 2.1 A/AA violations on the page as it is now: rule id and the first targets."""
    if not AXE.exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI must audit accessibility: {AXE} is missing (npm install --prefix .ci axe-core)")
        pytest.skip(f"no {AXE}: npm install --prefix .ci axe-core")
    page.add_script_tag(path=str(AXE))
    found = page.evaluate("async tags => (await axe.run(document, {runOnly: {type: 'tag', values: tags}}))"
                          ".violations.map(v => v.id + ': ' + v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(', '))",
                          WCAG)
    return found


def test_the_visitor_page_after_an_answer_has_no_accessibility_violations(page):
    ask(page, "J-PlatPatで特許を検索したい")
    assert accessibility_violations(page) == []


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def shoot(page, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def test_question_shows_programme_and_link(page):
    ask(page, "J-PlatPatで特許を検索したい")
    assert "J-PlatPat" in last_title(page)
    link = page.locator('#desk-chat a[href="https://www.j-platpat.inpit.go.jp/"]').last
    assert link.is_visible() and link.get_attribute("target") == "_blank"
    page.locator("#desk-qr svg").wait_for()  # the QR code of the chosen programme


def test_follow_up_stays_on_the_programme(page):
    ask(page, "J-PlatPatで特許を検索したい")
    ask(page, "それの料金は？")
    assert "J-PlatPat" in last_title(page)
    assert "についてのお答えです" in page.locator("#desk-chat .desk-lead").last.inner_text()


def test_audience_narrows_candidates(page):
    from chatbot import config, corpus

    audience = {p.title: p.audience for p in corpus.load(config.corpus_dir())}
    page.locator("#desk-audience label", has_text="大学・研究機関").click()
    ask(page, "特許の費用を安くしたい")
    assert "大学・研究機関" in audience[last_title(page)]


def test_category_click_shows_programme_and_sets_context(page):
    page.locator("#desk-browse button", has_text="6. 情報提供による支援").click()
    page.locator("#desk-browse button", has_text="特許情報プラットフォーム").click()
    page.locator("#desk-chat .desk-title", has_text="J-PlatPat").wait_for()
    assert page.locator("#desk-qr", has_text="J-PlatPat").is_visible()
    ask(page, "それの料金は？")
    assert "J-PlatPat" in last_title(page)


def test_maybe_buttons_show_a_close_candidate(page, desk):
    from gradio_client import Client

    api = Client(desk.url, verbose=False)
    # Which questions the engine finds ambiguous depends on its calibration: take the first that is.
    question = next((q for q in ["スタートアップ支援", "海外展開", "専門家派遣", "知財の相談窓口", "中小企業の支援"]
                     if api.predict(q, 5, "", api_name="/search")["ambiguous"]), None)
    if question is None:
        pytest.skip("no ambiguous question among the candidates with this calibration")
    ask(page, question)
    button = page.locator("#desk-maybe button").first
    label = button.inner_text()
    button.click()
    page.locator("#desk-chat .desk-title", has_text=label).wait_for()
    assert last_title(page) == label


def test_markup_question_is_shown_as_text(page):
    question = '<img src=x onerror="window.pwned=1">'
    ask(page, question)
    page.locator("#desk-chat", has_text=question).wait_for()  # the literal text is on the page
    assert page.locator("#desk-chat img[src=x]").count() == 0
    assert page.evaluate("window.pwned") is None


def test_off_topic_question_gets_the_desks(page):
    ask(page, "今日の天気は？")
    assert page.locator('#desk-chat a[href="https://chizai-portal.inpit.go.jp/"]').last.is_visible()


def test_like_is_stored(page, desk):
    ask(page, "起業したばかりで知財の専門家に相談したい")
    title = last_title(page)
    # Gradio translates its own labels: いいね under ja-JP (the desk's locale), Like otherwise
    page.locator('#desk-chat button:is([aria-label="いいね"], [aria-label="Like"])').last.click()
    page.locator("#desk-thanks", has_text="ありがとうございました").wait_for()
    question, key, helpful = eventually(lambda: query(  # this vote: the log writes a moment after it acknowledges
        desk.log_url, "SELECT question, key, helpful FROM feedback WHERE channel = 'visitor' AND question = ? "
        "ORDER BY id DESC", "起業したばかりで知財の専門家に相談したい"))[0]
    assert question == "起業したばかりで知財の専門家に相談したい" and helpful == 1
    from chatbot import config, corpus

    assert next(p.title for p in corpus.load(config.corpus_dir()) if p.key == key) == title


def login(page, name: str, password: str) -> None:
    page.locator("input[type=password]").wait_for()
    page.locator("input:not([type=password])").first.fill(name)
    page.locator("input[type=password]").fill(password)
    page.locator("input[type=password]").press("Enter")


def test_staff_console_behind_a_login_and_screenshots(page, desk, shots):
    ask(page, "J-PlatPatで特許を検索したい")
    desktop = shoot(page, shots, "visitor-desktop")
    page.set_viewport_size(PHONE)
    shoot(page, shots, "visitor-phone")
    page.set_viewport_size(DESKTOP)

    assert page.get_by_role("tab", name="職員用").count() == 0  # the visitor page offers no way in
    assert page.locator('a[href*="staff"]').count() == 0
    page.goto(page.url.rstrip("/") + "/staff/")
    with page.expect_response(lambda r: r.url.endswith("/staff/login")) as refused:
        login(page, desk.staff[0], "not-the-password")
    assert refused.value.status == 400
    shoot(page, shots, "staff-login")
    assert page.locator("input[type=password]").is_visible() and page.locator("#staff-question").count() == 0
    login(page, *desk.staff)
    box = page.locator("#staff-question textarea")
    box.fill("起業したてで、知財のことを専門家に聞きたい")  # a question of this test alone: it gets corrected below
    box.press("Enter")
    page.locator("#staff-flags", has_text="ms").wait_for()
    page.locator("#staff-passage .desk-title").wait_for()
    second = page.locator('#staff-table [data-testid="cell-1-2"]')  # row 2, column 施策
    title = second.inner_text().strip()
    second.click()
    page.locator("#staff-passage .desk-title", has_text=title).wait_for()  # the selected row's passage
    page.locator("#staff-up").click()
    page.locator("#staff-noted", has_text="記録しました").wait_for()
    choice = page.locator("#staff-right input")  # 「正しい施策はこれ」: type to filter, Enter to pick
    choice.click()
    choice.fill("8.(1)")
    choice.press("Enter")
    page.locator("#staff-correct").click()
    page.locator("#staff-noted", has_text="質問バンクに").wait_for()
    assert "8.(1)" in page.locator("#staff-noted").inner_text()
    assert '"8.(1)"' in desk.bank.read_text(encoding="utf-8")
    page.locator("#staff-summary", has_text="質問").wait_for()
    shoot(page, shots, "staff-desktop")
    page.set_viewport_size(PHONE)
    shoot(page, shots, "staff-phone")
    page.set_viewport_size(DESKTOP)
    assert accessibility_violations(page) == []
    page.locator("#staff-logout").click()
    page.locator("input[type=password]").wait_for()  # logged out: the login form again
    assert page.locator("#staff-question").count() == 0

    readme_shot = os.environ.get("MADOGUCHI_SCREENSHOT")  # kept from the shell by tests/conftest.py
    if readme_shot:
        target = REPO / readme_shot  # an absolute path stays as it is
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(desktop, target)
