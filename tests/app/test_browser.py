"""The pages in a real browser: `taskrank serve` (API + a worker process on the embedded broker) driven
by headless Chromium through Playwright. Screenshots go to artifacts/screenshots/."""

from __future__ import annotations

import csv
import io
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.app.conftest import LIBRARY_TASKS, write_csv_slice
from tests.app.test_e2e import TASKRANK, base_env, free_port, processes, wait_healthy

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "artifacts" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]


@pytest.fixture(scope="module")
def sync_playwright():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Chromium (apt-get install chromium) to run the browser tests")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
    return playwright.sync_playwright


try:
    from playwright.sync_api import Error as PlaywrightError
except ImportError:  # skipped by the fixture above
    PlaywrightError = Exception  # type: ignore[assignment,misc]


@pytest.fixture
def live_service(service_settings, tmp_path):
    """`taskrank serve` on the tiny model and 5-task library: embedded broker, a real worker process."""
    data_dir = tmp_path / "served"
    shutil.copytree(service_settings.data_dir, data_dir)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    logs = tmp_path / "logs"
    logs.mkdir()
    env = base_env(data_dir, TASKRANK_MODEL=service_settings.model, TASKRANK_DEVICE="cpu")
    with processes(TASKRANK + ["serve", "--port", str(port)], env=env, log_dir=logs) as procs:
        wait_healthy(url, procs, logs)
        yield url


class BrowserLog:
    """Console errors and uncaught page errors of every page a test opens."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def watch(self, page) -> None:
        page.on("console", lambda msg: self.errors.append(f"console {msg.type}: {msg.text}")
                if msg.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def assert_drawn(page, selector: str) -> None:
    box = page.locator(selector).bounding_box()
    assert box is not None and box["width"] > 50 and box["height"] > 50, (selector, box)


def test_upload_rank_and_read_the_result_in_a_browser(sync_playwright, live_service, shared_data, tmp_path):
    url = live_service
    csv_path = write_csv_slice(shared_data, "sst2", tmp_path / "movie_reviews_sample.csv", 60)
    expected_rows = list(csv.DictReader(open(csv_path, newline="")))
    log = BrowserLog()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
            page = context.new_page()
            log.watch(page)

            # upload page: a file the loader rejects first, then the real one
            page.goto(f"{url}/")
            assert page.title() == "Rank source tasks · taskrank"
            page.click("#paste-box summary")
            page.fill("#paste", "\n".join(f'{{"text": "{w} film", "label": "{lab}"}}' for w, lab in
                                          [("great", "pos"), ("awful", "neg"), ("superb", "pos"), ("dull", "neg")]))
            page.click("#check-paste")
            page.wait_for_selector("#dataset-summary:not(.hidden)")
            assert page.inner_text("#summary-rows") == "4" and page.inner_text("#summary-file") == "pasted.jsonl"
            assert page.input_value("#map-text") == "text" and page.input_value("#map-label") == "label"
            page.fill("#paste", "")

            bad = tmp_path / "broken.csv"
            bad.write_bytes(b"sentence,label\ngood film,1\nbad film,0\n\xff\xfe oops,1\n")
            page.set_input_files("#file", str(bad))
            page.wait_for_selector("#upload-error:not(.hidden)")
            assert "UTF-8" in page.inner_text("#upload-error-message")
            assert page.inner_text("#upload-error-file") == "broken.csv"
            assert page.inner_text("#upload-error-line") == "4"
            shot(page, "01-upload-error")
            # Chromium logs every 4xx response as a console error: the 422 asked for here is expected
            assert all("status of 422" in e for e in log.errors), log.errors
            log.errors.clear()

            # columns the loader cannot guess: pick them in the mapping; each change checks again
            odd = tmp_path / "odd_columns.csv"
            odd.write_text("review,sentiment\nlovely film,pos\ndreary film,neg\nfine film,pos\n")
            page.set_input_files("#file", str(odd))
            page.wait_for_selector("#upload-error:not(.hidden)")
            assert page.inner_text("#upload-error-field") == "text"
            assert page.input_value("#map-text") == "" and page.locator(".map-row.invalid #map-text").count() == 1
            page.select_option("#map-text", "review")
            page.wait_for_function("document.getElementById('upload-error-field')?.textContent === 'label'")
            page.select_option("#map-label", "sentiment")
            page.wait_for_selector("#dataset-summary:not(.hidden)")
            assert page.inner_text("#summary-rows") == "3" and "pos" in page.inner_text("#summary-labels")
            assert all("status of 422" in e for e in log.errors), log.errors
            log.errors.clear()

            page.set_input_files("#file", str(csv_path))
            page.wait_for_selector("#dataset-summary:not(.hidden)")
            assert page.is_hidden("#upload-error")
            assert page.inner_text("#summary-type") == "classification"
            assert page.inner_text("#summary-rows") == str(len(expected_rows))
            labels = page.inner_text("#summary-labels")
            assert "0" in labels and "1" in labels
            assert page.input_value("#map-text") == "sentence" and page.input_value("#map-label") == "label"
            assert page.input_value("#map-text_pair") == ""
            page.fill("#name", "movie reviews")
            page.check("input[name=method][value=taskemb]")
            page.fill("#top-k", "4")
            page.check("#all-class")
            shot(page, "02-upload-checked")
            page.click("#start")

            # job page: live progress until the ranking opens
            page.wait_for_url(re.compile(r".*/(jobs/[0-9a-f]+/view|rankings/[0-9a-f]+/view)$"), timeout=30_000)
            if "/jobs/" in page.url:
                job_url = page.url
                try:  # the job may finish (and the page move on) at any moment
                    state = page.locator("#job-state").text_content(timeout=2_000)
                except PlaywrightError:
                    state = None
                assert state in (None, "queued", "running", "succeeded")
            page.wait_for_url(re.compile(r".*/rankings/[0-9a-f]+/view$"), timeout=180_000)
            ranking_url = page.url
            page.wait_for_load_state("load")

            # result page: table, bar chart, map, downloads, the transfer button
            assert page.title() == "Ranking · movie reviews · taskrank"
            names = page.locator("#ranking-table tbody td.name").all_inner_texts()
            assert len(names) == 4 and set(names) <= set(LIBRARY_TASKS)
            ranks = page.locator("#ranking-table tbody td.rank").all_inner_texts()
            assert ranks == ["1", "2", "3", "4"]
            assert_drawn(page, "#score-chart")
            assert page.locator("#score-chart .bar rect").count() == 4
            assert_drawn(page, "#task-map")
            assert page.locator("#task-map .point").count() == len(LIBRARY_TASKS)
            assert page.locator("#map-target").count() == 1
            assert "Fisher components" in page.inner_text("#map-caption")
            transfer = page.locator("#transfer-button")
            assert transfer.is_enabled() and transfer.inner_text() == "Transfer to top-4"
            shot(page, "04-ranking-1280")

            with page.expect_download() as download_info:
                page.click("#download-csv")
            download = download_info.value
            assert download.suggested_filename.startswith("ranking-") and download.suggested_filename.endswith(".csv")
            table = list(csv.DictReader(io.StringIO(Path(download.path()).read_text())))
            assert [r["name"] for r in table] == names and [r["rank"] for r in table] == ranks
            assert all(float(r["score"]) > 0 for r in table)

            # the finished job page (kept with ?stay), the library and the jobs list
            ranking_id = ranking_url.rstrip("/").split("/")[-2]
            job_id = page.evaluate(f"fetch('/rankings/{ranking_id}').then(r => r.json()).then(b => b.job_id)")
            page.goto(f"{url}/jobs/{job_id}/view?stay=1")
            page.wait_for_function("document.getElementById('job-state').textContent === 'succeeded'")
            assert page.inner_text("#job-percent") == "100.0%"
            assert page.is_visible("#ranking-link")
            shot(page, "03-job-finished")
            if "job_url" in locals():
                assert job_url.endswith(f"/jobs/{job_id}/view")

            page.goto(f"{url}/library/view")
            assert page.title() == "Library · taskrank"
            assert page.locator("#library-table tbody tr").count() == len(LIBRARY_TASKS)
            assert_drawn(page, "#task-map")
            shot(page, "05-library")

            page.goto(f"{url}/jobs/view")
            assert page.locator(f"#jobs-table tr[data-job-id='{job_id}']").count() == 1
            shot(page, "06-jobs")

            # the same result on a phone
            phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                        is_mobile=True, has_touch=True)
            mobile = phone.new_page()
            log.watch(mobile)
            mobile.goto(ranking_url)
            assert mobile.locator("#ranking-table tbody tr").count() == 4
            assert_drawn(mobile, "#score-chart")
            assert_drawn(mobile, "#task-map")
            page_width = mobile.evaluate("document.documentElement.scrollWidth")
            assert page_width <= 390, f"the page scrolls sideways on a phone ({page_width}px)"
            shot(mobile, "07-ranking-390")
            mobile.goto(f"{url}/")
            assert mobile.evaluate("document.documentElement.scrollWidth") <= 390
            shot(mobile, "08-upload-390")
            phone.close()

            # "Transfer to top-4" asks first (more than 3 sources), declining starts nothing; accepting
            # starts a transfer batch from this ranking and shows its page
            page.goto(ranking_url)
            asked: list[str] = []

            def answer(accept: bool) -> Any:
                def handle(dialog: Any) -> None:
                    asked.append(dialog.message)
                    dialog.accept() if accept else dialog.dismiss()
                return handle

            page.once("dialog", answer(False))
            page.click("#transfer-button")
            page.wait_for_timeout(500)
            assert len(asked) == 1 and asked[0].startswith("Start 4 transfers"), asked
            assert "/transfers/" not in page.url and page.is_enabled("#transfer-button")
            page.once("dialog", answer(True))
            page.click("#transfer-button")
            page.wait_for_url(re.compile(r".*/transfers/[0-9a-f]+/view$"), timeout=30_000)
            assert page.locator("h1").count() == 1
            shot(page, "09-transfer")
        finally:
            browser.close()
    assert log.errors == []


@pytest.fixture
def api_only_service(service_settings, tmp_path):
    """`taskrank serve --no-worker`: pages and docs only, nothing queued."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    logs = tmp_path / "api-logs"
    logs.mkdir()
    env = base_env(service_settings.data_dir, TASKRANK_MODEL=service_settings.model, TASKRANK_DEVICE="cpu")
    with processes(TASKRANK + ["serve", "--no-worker", "--port", str(port)], env=env, log_dir=logs) as procs:
        wait_healthy(url, procs, logs, workers=0)
        yield url


def offline_page(browser, url: str, log: BrowserLog, blocked: list[str]):
    """A page that may load from the service only: any other request is aborted and recorded."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})

    def only_local(route) -> None:
        if route.request.url.startswith(url):
            route.continue_()
        else:
            blocked.append(f"{route.request.resource_type} {route.request.url}")
            route.abort()

    context.route("**/*", only_local)
    page = context.new_page()
    log.watch(page)
    return page


def test_api_docs_render_offline(sync_playwright, api_only_service):
    """/docs (Swagger UI) and /redoc load their scripts from the service, never a CDN."""
    url = api_only_service
    log = BrowserLog()
    blocked: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = offline_page(browser, url, log, blocked)
            page.goto(f"{url}/docs")
            page.wait_for_selector(".opblock", timeout=20_000)
            assert page.locator(".opblock").count() >= 10
            assert "/rankings" in page.inner_text(".swagger-ui")
            shot(page, "10-docs-offline")
            page.goto(f"{url}/redoc")
            page.wait_for_selector("[data-section-id]", state="attached", timeout=20_000)
            assert "rankings" in page.inner_text("body").lower()
        finally:
            browser.close()
    # ReDoc's sidebar asks for Redocly's logo and hides it when it does not load; nothing else may leave
    logo = "image https://cdn.redoc.ly/redoc/logo-mini.svg"
    assert [b for b in blocked if b != logo] == []
    assert [e for e in log.errors if e != "console error: Failed to load resource: net::ERR_FAILED"] == []


def test_choosing_files_stores_nothing_until_the_ranking_starts(sync_playwright, api_only_service, tmp_path):
    """The form checks each chosen file without storing it; submitting stores one record."""
    import httpx

    url = api_only_service
    first = tmp_path / "first.csv"
    first.write_text("sentence,label\ngreat film,pos\nawful film,neg\nfine film,pos\n")
    second = tmp_path / "second.csv"
    second.write_text("sentence,label\nlovely film,pos\ndreary film,neg\n")
    log = BrowserLog()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            log.watch(page)
            page.goto(f"{url}/")
            for path, rows in ((first, "3"), (second, "2"), (first, "3")):
                page.set_input_files("#file", str(path))
                page.wait_for_function(f"document.getElementById('summary-rows')?.textContent === '{rows}'")
                assert page.is_visible("#dataset-summary")
            page.select_option("#task-type", "classification")  # a changed option checks again
            page.wait_for_selector("#dataset-summary:not(.hidden)")
            assert httpx.get(f"{url}/datasets").json() == []
            page.check("input[name=method][value=textemb]")
            page.click("#start")
            page.wait_for_url(re.compile(r".*/jobs/[0-9a-f]+/view$"), timeout=30_000)
        finally:
            browser.close()
    stored = httpx.get(f"{url}/datasets").json()
    assert [(d["filename"], d["rows"]) for d in stored] == [("first.csv", 3)]
    assert log.errors == []


def test_ranking_table_fits_and_the_library_filters(sync_playwright, api_only_service, service_settings,
                                                    shared_data, tmp_path):
    """A TaskEmb ranking's per-component columns start collapsed behind a toggle, so the table fits its card
    on a laptop and a phone; the library page's filter box narrows the table."""
    import httpx

    from tests.app.test_api import run_queued_jobs

    url = api_only_service
    csv_path = write_csv_slice(shared_data, "sst2", tmp_path / "reviews.csv", 40)
    dataset = httpx.post(f"{url}/datasets", files={"file": ("reviews.csv", csv_path.read_bytes())}).json()
    ranking = httpx.post(f"{url}/rankings", json={"dataset_id": dataset["id"], "method": "taskemb",
                                                  "all_class": True}).json()
    assert run_queued_jobs(service_settings) == 1  # as the worker would, on the service's own database
    log = BrowserLog()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for width in (1280, 390):
                page = browser.new_context(viewport={"width": width, "height": 900}).new_page()
                log.watch(page)
                page.goto(f"{url}/rankings/{ranking['id']}/view")
                table_width = page.evaluate("document.getElementById('ranking-table').scrollWidth")
                wrap_width = page.evaluate("document.querySelector('#ranking-table').parentElement.clientWidth")
                assert table_width <= wrap_width, (width, table_width, wrap_width)
                assert page.locator("#ranking-table th.part").first.is_hidden()
                page.click("#toggle-parts")
                assert page.locator("#ranking-table th.part:visible").count() == 5  # cls + 2 layers x 2
                assert page.get_attribute("#toggle-parts", "aria-expanded") == "true"
                shot(page, f"11-ranking-parts-{width}")
                page.click("#toggle-parts")
                assert page.locator("#ranking-table th.part:visible").count() == 0
                page.context.close()

            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            log.watch(page)
            page.goto(f"{url}/library/view")
            assert page.locator("#library-table tbody tr:visible").count() == len(LIBRARY_TASKS)
            page.fill("#library-filter", "sst")
            assert page.locator("#library-table tbody tr:visible td.name").all_inner_texts() == ["sst2"]
            assert page.inner_text("#library-filter-count") == f"1 of {len(LIBRARY_TASKS)}"
            page.fill("#library-filter", "sequence")
            assert page.locator("#library-table tbody tr:visible td.name").all_inner_texts() == ["conll2003_ner"]
            page.fill("#library-filter", "")
            assert page.locator("#library-table tbody tr:visible").count() == len(LIBRARY_TASKS)
        finally:
            browser.close()
    assert log.errors == []


def test_garbage_files_show_no_mojibake(sync_playwright, api_only_service, tmp_path):
    """'Columns found' never shows undecodable bytes: not UTF-8 is said; control characters are escaped."""
    url = api_only_service
    jpeg = tmp_path / "photo.csv"
    jpeg.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01" + bytes(range(128, 256)) + b"\n1,2\n")
    control = tmp_path / "control.csv"
    control.write_bytes(b"\x01\x02PK\x03\x04,\x1b[2J\nrow,1\nrow,2\n")
    log = BrowserLog()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            log.watch(page)
            page.goto(f"{url}/")
            page.set_input_files("#file", str(jpeg))
            page.wait_for_selector("#upload-error:not(.hidden)")
            note = page.inner_text("#column-map-note")
            assert note == "The file is not UTF-8 text, so no columns can be read from it.", note
            page.set_input_files("#file", str(control))
            page.wait_for_selector("#upload-error:not(.hidden)")
            page.wait_for_function("document.getElementById('column-map-note').textContent.includes('Columns found')")
            note = page.inner_text("#column-map-note")
            assert "\\x01\\x02PK\\x03\\x04, \\x1b[2J" in note and "\ufffd" not in note
            assert "\\x01\\x02PK" in page.inner_text("#upload-error-message")  # the loader's message, escaped too
        finally:
            browser.close()
    assert all("status of 422" in e for e in log.errors), log.errors
