"""Headless Chromium for browser tests, driven by selenium through chromedriver: one browser
(its own chromedriver, Chromium and profile) per participant, each owned by the test from
the moment it starts and stopped when it ends, whatever happened in between.

Browser tests run only in a network namespace whose one interface is the loopback (`./dev
test` runs pytest in `unshare -n` with lo up, as root): Chromium then offers 127.0.0.1 host
candidates only (with --allow-loopback-in-peer-connection) and nothing leaves the machine.
`cannot_run()` says why they cannot run here; `needs_browsers` skips a test with that reason.

By hand: unshare -n sh -c 'ip link set lo up; exec .venv/bin/python -m pytest -q tests/test_web_page.py'
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from charter.processes import free_port
from waits import wait_until

CHROMIUM = os.environ.get("CHARTER_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("CHARTER_TEST_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"

FLAGS = [
    "--headless=new",
    "--no-sandbox",  # as root
    "--use-fake-device-for-media-stream",  # a 640x480 camera (a test pattern) and a tone
    "--use-fake-ui-for-media-stream",  # getUserMedia without a prompt
    "--allow-loopback-in-peer-connection",  # 127.0.0.1 ICE candidates: the only interface here
    "--autoplay-policy=no-user-gesture-required",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--metrics-recording-only",
    "--password-store=basic",
    # A hidden or waiting page keeps its timers and media running at full rate.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--window-size=1280,800",
]
START_SECONDS = 60.0
STOP_SECONDS = 15.0


def interfaces() -> list[str]:
    return sorted(name for _, name in socket.if_nameindex())


def cannot_run() -> str | None:
    """Why browser tests cannot run here, or None."""
    found = interfaces()
    if found != ["lo"]:
        return (
            f"browser tests run only in a network namespace with only the loopback interface (here: "
            f"{', '.join(found)}); `./dev test` runs them so as root, or: "
            "unshare -n sh -c 'ip link set lo up; exec .venv/bin/python -m pytest tests/test_web_page.py'"
        )
    try:
        socket.create_server(("127.0.0.1", 0)).close()
    except OSError:
        return "the loopback interface is down (ip link set lo up)"
    for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)):
        if not os.access(path, os.X_OK):
            return f"{name} is not installed ({path}; Debian: apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


CANNOT_RUN = cannot_run()
needs_browsers = pytest.mark.skipif(CANNOT_RUN is not None, reason=CANNOT_RUN or "")


def _children(pid: int) -> list[int]:
    """Every descendant of `pid` alive now (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _with_profile(profile: Path) -> list[int]:
    """Processes whose command line names this browser's own profile directory (its Chromium)."""
    marker = f"--user-data-dir={profile}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker in f.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                continue
    return found


class Browser:
    """One headless Chromium with its own chromedriver and profile under `workdir`."""

    def __init__(self, name: str, workdir: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.name = name
        self.workdir = workdir
        self.profile = workdir / f"{name}-profile"
        self.profile.mkdir(parents=True, exist_ok=True)
        self.driver_log = workdir / f"{name}-chromedriver.log"
        self.chromium_log = workdir / f"{name}-chromium.log"
        self.frozen: list[int] = []
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in [*FLAGS, f"--user-data-dir={self.profile}", "--enable-logging", "--v=0",
                     f"--log-file={self.chromium_log}"]:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.service = Service(executable_path=CHROMEDRIVER, port=free_port(), log_output=str(self.driver_log))
        try:
            self.driver = webdriver.Chrome(service=self.service, options=options)
        except BaseException:
            with contextlib.suppress(Exception):
                self.service.stop()
            for pid in _with_profile(self.profile):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            raise
        self.driver.set_script_timeout(30)
        self.driver.set_page_load_timeout(START_SECONDS)

    # --- the page ---------------------------------------------------------------------

    def open(self, url: str) -> None:
        self.driver.get(url)
        wait_until(lambda: self.run("return typeof window.charterTest === 'object'"), timeout=20,
                   what=f"{self.name}: the page to load at {url}")

    def run(self, script: str, *args: Any) -> Any:
        """A script in the page; a promise it returns is awaited (WebDriver's Execute Script)."""
        return self.driver.execute_script(script, *args)

    def join(self, conference: str, name: str | None = None) -> None:
        """Fill in the form and click Join, as a person does."""
        from selenium.webdriver.common.by import By

        for field, value in (("conference", conference), ("name", name or self.name)):
            element = self.driver.find_element(By.ID, field)
            element.clear()
            element.send_keys(value)
        self.driver.find_element(By.ID, "join").click()

    def click_leave(self) -> None:
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.ID, "leave").click()

    def state(self) -> dict[str, Any]:
        return dict(self.run("return window.charterTest.state()"))

    def stats(self) -> dict[str, Any]:
        return dict(self.run("return window.charterTest.stats()"))

    def text(self, element_id: str) -> str:
        from selenium.webdriver.common.by import By

        return str(self.driver.find_element(By.ID, element_id).text)

    def wait_phase(self, *phases: str, timeout: float = 20.0) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def reached() -> bool:
            found.update(self.state())
            return found["phase"] in phases

        try:
            wait_until(reached, timeout=timeout, what=f"{self.name}: phase {' or '.join(phases)}")
        except AssertionError as error:
            raise AssertionError(f"{error}; state {self.describe(found)}") from None
        return found

    def screenshot(self, path: Path) -> Path:
        assert self.driver.save_screenshot(str(path)), f"{self.name}: no screenshot"
        return path

    def console(self) -> list[str]:
        """The page's console messages since the last call."""
        with contextlib.suppress(Exception):
            return [f"{e.get('level')} {e.get('message')}" for e in self.driver.get_log("browser")]
        return []

    def describe(self, state: dict[str, Any] | None = None) -> str:
        if state is None:
            with contextlib.suppress(Exception):
                state = self.state()
        shown = {k: v for k, v in (state or {}).items() if k not in ("offer", "answer")}
        return f"{self.name}: {shown}\n  console: {self.console()[-20:]}"

    # --- the browser's processes ------------------------------------------------------

    def processes(self) -> list[int]:
        """Chromium's processes (chromedriver's descendants and whatever has its profile)."""
        driver = self.service.process
        pids = set(_children(driver.pid)) if driver is not None else set()
        return sorted(pids | set(_with_profile(self.profile)))

    def freeze(self) -> None:
        """SIGSTOP every Chromium process: the page, its socket and its ICE all fall silent,
        as when a laptop's lid closes or its network goes, and nothing is closed."""
        self.frozen = self.processes()
        for pid in self.frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self.frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.frozen = []

    def close_page(self) -> None:
        """Close the conference's tab (the browser stays, on a blank tab): no Leave, no click."""
        conference_tab = self.driver.current_window_handle
        self.driver.switch_to.new_window("tab")
        blank = self.driver.current_window_handle
        self.driver.switch_to.window(conference_tab)
        self.driver.close()
        self.driver.switch_to.window(blank)

    def stop(self) -> None:
        """Quit Chromium and chromedriver; kill whatever of them is left."""
        self.thaw()
        owned = self.processes()
        deadline = time.monotonic() + STOP_SECONDS
        with contextlib.suppress(Exception):
            self.driver.quit()
        driver = self.service.process
        if driver is not None and driver.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                driver.wait(max(0.1, deadline - time.monotonic()))
            if driver.poll() is None:
                driver.kill()
                driver.wait()
        for pid in owned + _with_profile(self.profile):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


class Browsers:
    """Owns the browsers of a test: leaving the `with` block stops every one."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.items: list[Browser] = []

    def start(self, name: str) -> Browser:
        browser = Browser(name, self.workdir)
        self.items.append(browser)
        return browser

    def describe(self) -> str:
        return "\n".join(b.describe() for b in self.items)

    def __enter__(self) -> Browsers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for browser in reversed(self.items):
            browser.stop()
