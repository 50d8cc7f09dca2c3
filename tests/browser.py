"""Headless Chromium for the report test (and the README picture): render an HTML file with every
host name unresolvable, and list what a page would fetch from the network. Test tooling, kept out of
the package: the report itself never needs a browser."""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path


def chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def screenshot(page: Path, png: Path, width: int = 1200, height: int = 3000,
               net_log: Path | None = None, timeout: float = 120) -> Path:
    """Render an HTML file in headless Chromium with every host name unresolvable (no network)."""
    browser = chromium()
    if browser is None:
        raise FileNotFoundError("chromium not found (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="sluice-chromium-") as profile:
        args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--hide-scrollbars", '--host-resolver-rules=MAP * ~NOTFOUND', f"--user-data-dir={profile}",
                f"--window-size={width},{height}", f"--screenshot={Path(png).resolve()}"]
        if net_log is not None:
            args.append(f"--log-net-log={Path(net_log).resolve()}")
        subprocess.run(args + [Path(page).resolve().as_uri()], check=True, timeout=timeout,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return Path(png)


_URL = re.compile(r"""(?:src|href|url)\s*[=(]\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def external_references(page_html: str) -> list[str]:
    """Attributes or CSS that would make a browser fetch something from the network."""
    return [m.group(0) for m in _URL.finditer(page_html)]
