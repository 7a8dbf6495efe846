"""The operator console in a real browser (#18): Debian's headless Chromium logs in, pauses
the PACS (Orthanc, the real one), opens the study, sees its overlay thumbnails rendered from
the result objects, presses "Retry now" on the paused destination and the results arrive in
Orthanc. A screenshot of every page is kept in build/artefacts/console/ to be looked at."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from marrownode.console.auth import hash_password
from marrownode.synthetic.studies import StudyOptions, build_study
from tests.conftest import ARTEFACTS, RESULTS_PER_STUDY, wait_until
from tests.scu import send

ADMIN_PASSWORD = "an admin password"
VIEWER_PASSWORD = "a viewer password"


def _shot(driver: Any, name: str) -> Path:
    """The whole page as a PNG artefact."""
    folder = ARTEFACTS / "console"
    folder.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(int(height), 800), 6000))
    path = folder / f"{name}.png"
    assert driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)
    return path


def _press(driver: Any, button: Any) -> None:
    """Click a button or link that leads to another page, and wait until that page is whole.

    The old page is marked in its window object and the wait is for a document without the
    mark: no element reference is held across the navigation (Chromium can answer a check on
    an old element with "Node ... does not belong to the document" instead of "stale")."""
    driver.execute_script("window.__marrownodeOldPage = true;")
    button.click()
    WebDriverWait(driver, 15).until(
        lambda d: d.execute_script("return window.__marrownodeOldPage !== true "
                                   "&& document.readyState === 'complete';"))


def _log_in(driver: Any, base: str, name: str, password: str) -> None:
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(password)
    _press(driver, driver.find_element(By.ID, "login"))


def _destination_row(driver: Any, name: str) -> Any:
    return driver.find_element(By.ID, f"destination-{name}")


def test_the_console_in_a_browser_from_login_to_a_delivery_in_orthanc(
        node_factory, orthanc_factory, browser) -> None:
    orthanc = orthanc_factory().start()
    node = node_factory(
        http={"enabled": True, "users": [
            {"name": "admin", "role": "admin", "password_hash": hash_password(ADMIN_PASSWORD)},
            {"name": "viewer", "role": "read-only",
             "password_hash": hash_password(VIEWER_PASSWORD)}]},
        completion={"idle_seconds": 60},
        destinations=[{"name": "orthanc", "ae_title": orthanc.ae_title, "host": "127.0.0.1",
                       "port": orthanc.dicom_port}])
    assert node.http is not None
    base = f"http://127.0.0.1:{node.http.port}"

    browser.get(base + "/")
    assert browser.current_url.startswith(base + "/login?next=")
    _shot(browser, "1-login")
    _log_in(browser, base, "admin", ADMIN_PASSWORD)
    assert browser.current_url == base + "/"
    _press(browser, _destination_row(browser, "orthanc").find_element(
        By.XPATH, ".//button[text()='Pause']"))
    assert "paused" in _destination_row(browser, "orthanc").text
    assert "orthanc: paused." in browser.find_element(By.CLASS_NAME, "flash").text

    datasets = build_study(StudyOptions(style="siemens", study_key="console",
                                        patient_name="Browser^Patient"))
    study_uid = datasets[0].StudyInstanceUID
    assert send(node.receiver.port, datasets) == [0] * len(datasets)
    wait_until(lambda: (node.index.studies.study(study_uid) or {}).get("state") == "analysed",
               timeout=120)
    wait_until(lambda: node.index.outbox.counts().get("orthanc", {}).get("queued", 0)
               == RESULTS_PER_STUDY, timeout=30)
    assert orthanc.instance_count() == 0  # paused: nothing went out

    browser.get(base + "/studies")
    table = browser.find_element(By.ID, "studies").text
    assert "Browser Patient" in table and "analysed" in table and "pending" in table
    _shot(browser, "3-studies")
    _press(browser, browser.find_element(By.CSS_SELECTOR, "#studies tbody a"))
    assert browser.current_url == f"{base}/studies/{study_uid}"
    thumbnails = browser.find_elements(By.CSS_SELECTOR, "img.overlay-thumbnail")
    assert thumbnails, "no overlay thumbnail on the study page"
    widths = [browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                     image) for image in thumbnails]
    assert all(width and width > 100 for width in widths), widths
    report = json.loads(node.index.studies.study(study_uid)["report"])
    overlays = {o["sop_instance_uid"]: o for o in report["dixon_sets"][0]["outputs"]
                if o["kind"] == "overlay"}
    shown = [image.get_attribute("src").rsplit("/", 1)[1].removesuffix(".png")
             for image in thumbnails]
    assert all(overlays[uid]["marrow_voxels"] > 0 for uid in shown)  # slices with marrow
    assert any(overlays[uid]["focus_voxels"] > 0 for uid in shown)  # and the focus
    page = browser.find_element(By.TAG_NAME, "main").text
    assert "Vertebrae" in page and "V3" in page and "Foci" in page
    assert "queued" in browser.find_element(By.ID, "deliveries").text
    _shot(browser, "4-study")

    browser.get(base + "/")
    assert "paused" in _destination_row(browser, "orthanc").text
    _shot(browser, "2-overview-paused")
    _press(browser, _destination_row(browser, "orthanc").find_element(
        By.XPATH, ".//button[text()='Retry now']"))
    wait_until(lambda: orthanc.instance_count() == RESULTS_PER_STUDY, timeout=60)
    assert {s["MainDicomTags"]["SeriesDescription"] for s in orthanc.series(study_uid)} >= {
        "marrownode sagittal signal loss % map"}
    wait_until(lambda: node.index.outbox.counts()["orthanc"] == {"delivered": RESULTS_PER_STUDY},
               timeout=30)
    browser.refresh()
    row = _destination_row(browser, "orthanc").text
    assert "active" in row and f" {RESULTS_PER_STUDY} " in f" {row} "
    _shot(browser, "5-overview-delivered")
    browser.get(f"{base}/studies/{study_uid}")
    summary = browser.find_element(By.ID, "delivery-summary").text
    assert summary == f"orthanc {RESULTS_PER_STUDY} delivered"
    browser.find_element(By.TAG_NAME, "summary").click()  # all delivered: the list is folded
    assert "0x0000 Success" in browser.find_element(By.ID, "deliveries").text
    trail = browser.find_element(By.ID, "trail").text
    assert f"orthanc: {RESULTS_PER_STUDY} delivered" in trail
    _shot(browser, "6-study-delivered")
    node_trail = [e["detail"] for e in node.index.studies.events("*")]
    assert "pause orthanc (by admin in the console)" in node_trail
    assert any(d.startswith("retry now orthanc: resumed, ") and d.endswith(
        "(by admin in the console)") for d in node_trail)

    _press(browser, browser.find_element(By.LINK_TEXT, "Delete…"))
    _shot(browser, "8-delete-confirmation")
    _press(browser, browser.find_element(By.ID, "delete"))  # the box is not ticked
    assert "tick the box" in browser.find_element(By.CLASS_NAME, "flash").text
    assert node.index.studies.study(study_uid) is not None

    _press(browser, browser.find_element(By.XPATH, "//button[text()='Log out']"))
    browser.get(f"{base}/studies/{study_uid}")
    assert "/login" in browser.current_url and "Browser" not in browser.page_source
    _log_in(browser, base, "viewer", VIEWER_PASSWORD)
    assert browser.current_url == f"{base}/studies/{study_uid}"
    assert "Browser Patient" in browser.page_source
    assert not browser.find_elements(By.XPATH, "//button[text()='Analyse again']")
    _shot(browser, "7-study-read-only")
