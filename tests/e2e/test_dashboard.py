"""The local dashboard (``GET /`` of the stack) rendered by headless Chromium (Debian's ``chromium``, installed
by tools/install_chromium.sh when absent): it calls the public API with the key and shows the balance,
the grants with their expiry and the ledger."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import ADMIN_KEY, REPO_ROOT, StackProcess

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--virtual-time-budget=15000",  # let the page's fetches finish before dumping / shooting
]


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    script = REPO_ROOT / "tools" / "install_chromium.sh"
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900, check=False)
    if result.returncode == 3:
        pytest.skip(f"chromium is not installed and cannot be installed here: {result.stderr.strip()}")
    assert result.returncode == 0, f"tools/install_chromium.sh failed:\n{result.stdout}\n{result.stderr}"
    found = shutil.which("chromium")
    assert found, "tools/install_chromium.sh succeeded but chromium is not on PATH"
    return found


def render(chromium: str, url: str, profile: Path, *extra: str) -> str:
    result = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def text_of(dom: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    assert match, f"#{element_id} not in the page"
    return match.group(1)


def test_dashboard_shows_balance_grants_and_ledger(
    stack: StackProcess, chromium: str, tmp_path: Path
) -> None:
    customer = f"cus_dash_{uuid.uuid4().hex[:8]}"
    assert (
        stack.request(
            "POST",
            f"/v1/customers/{customer}/grants",
            {"amount": "1250", "category": "paid", "expires_at": "2099-01-01T00:00:00Z"},
            key=ADMIN_KEY,
        )[0]
        == 201
    )
    status, grant, _ = stack.request(
        "POST", f"/v1/customers/{customer}/grants", {"amount": "0.5"}, key=ADMIN_KEY
    )
    assert status == 201
    reservation = {"id": f"job_{customer}", "customer": customer, "credits": "250", "expires_in": 3600}
    assert stack.request("POST", "/v1/reservations", reservation, key=ADMIN_KEY)[0] == 201
    dom = render(
        chromium, f"{stack.url}/?customer={customer}#key={ADMIN_KEY}", tmp_path / "profile", "--dump-dom"
    )
    assert 'data-loaded="true"' in dom, dom[-2000:]
    assert text_of(dom, "available") == "1000.5"
    assert text_of(dom, "reserved") == "250"
    assert f"job_{customer}" in dom  # the open reservations table
    assert "no subscriptions" in dom  # the subscriptions table (GET .../subscriptions answered)
    assert text_of(dom, "paid") == "1000"
    assert text_of(dom, "promotional") == "0.5"
    assert text_of(dom, "next_expiry") == "1250 on 2099-01-01"
    assert grant["id"] in dom
    assert "2099-01-01 00:00:00Z" in dom  # the grant's expiry in the grants table
    assert dom.count(">grant<") == 2  # two ledger entries
    assert ADMIN_KEY not in dom  # the key is taken out of the address and never rendered


def test_dashboard_says_when_the_key_is_wrong(stack: StackProcess, chromium: str, tmp_path: Path) -> None:
    dom = render(chromium, f"{stack.url}/?customer=cus_x#key=not-a-key", tmp_path / "profile", "--dump-dom")
    assert 'data-loaded="error"' in dom
    assert "unauthorized" in text_of(dom, "message")


def test_dashboard_screenshot(stack: StackProcess, chromium: str, tmp_path: Path) -> None:
    shot = tmp_path / "dashboard.png"
    render(
        chromium,
        f"{stack.url}/?customer=cus_shot#key={ADMIN_KEY}",
        tmp_path / "profile",
        f"--screenshot={shot}",
        "--window-size=1280,900",
    )
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("CREDITS_DASHBOARD_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


def test_dashboard_draws_the_burn_by_meter_and_the_revenue_report(
    stack: StackProcess, chromium: str, tmp_path: Path
) -> None:
    import time

    customer = f"cus_burn_{uuid.uuid4().hex[:8]}"
    assert (
        stack.request("POST", f"/v1/customers/{customer}/grants", {"amount": "500"}, key=ADMIN_KEY)[0] == 201
    )
    for n, (meter, quantity) in enumerate((("api_call", 40), ("storage_gb_hour", 200))):
        usage = {"id": f"{customer}-{n}", "customer": customer, "meter": meter, "quantity": quantity}
        assert stack.request("POST", "/v1/usage", usage, key=ADMIN_KEY)[0] == 201
    time.sleep(3)  # the ledger stream counts the debits about a second later
    dom = render(
        chromium, f"{stack.url}/?customer={customer}#key={ADMIN_KEY}", tmp_path / "profile", "--dump-dom"
    )
    assert 'aria-label="credits debited per day, last 30 days"' in dom, dom[-3000:]
    assert ": 40</title>" in dom and "storage_gb_hour: 10</title>" in dom  # one bar segment per meter
    assert "1.666666 credits/day over 30 days" in text_of(dom, "burn-summary")
    # the operator's revenue report loaded for this month (admin grants carry no money)
    assert 'id="revenue"' in dom and "Revenue report" in dom
    assert text_of(dom, "revenue-message") in ("", "no money moved or deferred in this range")
