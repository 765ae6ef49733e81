"""What the page tests share: Debian's headless chromium driven by Selenium, and waiting on a condition."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

# Without the background-networking flags chromium keeps trying hosts this offline machine cannot reach.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def chromium(profile: Path, window: str = "1280,1000") -> Iterator:
    """A headless chromium WebDriver with a fresh profile (for a fixture: yields it, quits after); skips when
    chromium or chromedriver is missing."""
    pytest.importorskip("selenium")
    binary, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and chromedriver):
        pytest.skip(
            "Debian's chromium and chromium-driver are not installed (scripts/install.sh installs them as root)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary  # with the driver's path too: Selenium Manager never looks online
    for flag in [*CHROMIUM_FLAGS, f"--window-size={window}", f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    yield driver
    driver.quit()


def until(driver, script: str, timeout: float = 30.0):
    """Wait until `script` (a JS expression) is truthy -> its value; a condition, not a timing."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: d.execute_script(f"return {script}")
    )
