"""Issue 20, item 7: a password in `?password=` of the catalog URL was printed in the start-up log, in `/status`
(listening on 0.0.0.0) and in `kvfs du` errors; only `user:pw@` was redacted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from faultlib import env

from kvfs.catalog.engine import describe_url, parse_catalog_url, redact_url

SECRET = "s3cr3t-pw"
URLS = [
    f"postgresql://kvfs@127.0.0.1:1/db?password={SECRET}",
    f"postgresql://kvfs:{SECRET}@127.0.0.1:1/db",
    f"postgresql://kvfs@127.0.0.1:1/db?sslmode=require&sslpassword={SECRET}&passfile=/x/{SECRET}",
]


@pytest.mark.parametrize("url", URLS)
def test_redaction_hides_every_password(url: str) -> None:
    assert SECRET not in redact_url(url)
    assert SECRET not in describe_url(parse_catalog_url(url))
    assert "127.0.0.1" in redact_url(url)


@pytest.mark.parametrize("url", URLS)
def test_kvfs_du_error_does_not_print_the_password(tmp_path: Path, url: str) -> None:
    """Port 1: nothing listens, so opening the catalog fails and the error names the URL."""
    root = tmp_path / "root"
    root.mkdir()
    argv = [sys.executable, "-m", "kvfs.cli", "--root", str(root), "--catalog", url, "du"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env(), cwd=tmp_path, timeout=60)
    assert proc.returncode != 0
    assert "127.0.0.1" in proc.stderr or "catalog" in proc.stderr
    assert SECRET not in proc.stderr + proc.stdout


def test_evictor_start_up_log_and_status_do_not_print_the_password(tmp_path: Path) -> None:
    """A real evictor on an unreachable PostgreSQL: it starts (followers wait out outages), logs the catalog and
    serves /status; neither may carry the password."""
    import json
    import time
    import urllib.request

    root = tmp_path / "root"
    root.mkdir()
    url = URLS[0]
    argv = [sys.executable, "-m", "evictor", "--root", str(root), "--catalog", url, "--metrics-port", "0"]
    log = tmp_path / "evictor.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env(), cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        port = None
        while time.monotonic() < deadline and port is None:
            for line in log.read_text(errors="replace").splitlines():
                if "http :" in line:
                    port = int(line.split("http :")[1].split()[0].rstrip(","))
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        assert port is not None, log.read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=30) as resp:
            status = resp.read().decode()
        assert json.loads(status)
        time.sleep(1.0)  # a retry or two of the unreachable catalog, logged
    finally:
        proc.kill()
        proc.wait()
    text = log.read_text(errors="replace")
    assert "catalog" in text
    assert SECRET not in text and SECRET not in status
