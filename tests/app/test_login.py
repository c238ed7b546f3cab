"""The OpenID Connect login end to end: ecl-app with secrets.toml [auth] pointing at a stub
provider on loopback (tests/app/oidc_stub.py), in headless Chromium."""

from __future__ import annotations

import secrets

import pytest
from app_browser import (
    CHART,
    NEEDS_CHROMIUM,
    SHOTS,
    AppStartError,
    chromium_browser,
    free_port,
    new_page,
    open_page,
    screenshot,
    serve_app,
    settle,
)
from oidc_stub import RunningProvider, StubProvider

ALLOWED, STRANGER = "alice@hospital.example", "mallory@elsewhere.example"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(400),
    NEEDS_CHROMIUM,
]


def write_secrets(path, port: int, provider: RunningProvider) -> None:
    stub = provider.provider
    path.write_text(
        "[auth]\n"
        f'redirect_uri = "{stub.redirect_uri}"\n'
        f'cookie_secret = "{secrets.token_urlsafe(48)}"\n'
        f'client_id = "{stub.client_id}"\n'
        f'client_secret = "{stub.client_secret}"\n'
        f'server_metadata_url = "{provider.metadata_url}"\n'
    )


def sign_in(page, url: str, email: str) -> None:
    """From the app's login page through the provider's form and back."""
    page.goto(url)
    page.get_by_role("button", name="Log in").click()
    page.locator("#email").fill(email)
    page.locator("#sign-in").click()
    page.wait_for_url(f"{url}/**")
    settle(page)


def test_login_gates_every_page_and_the_allow_list_is_enforced(sim_run, tmp_path) -> None:
    pytest.importorskip(
        "authlib", reason="Streamlit's login needs Authlib: pip install 'streamlit[auth]'"
    )
    SHOTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    stub = StubProvider(
        client_id="ecl-app", client_secret=secrets.token_urlsafe(24),
        redirect_uri=f"http://127.0.0.1:{port}/oauth2callback",
    )  # fmt: skip
    with RunningProvider(stub) as provider:
        write_secrets(tmp_path / "secrets.toml", port, provider)
        args = ["--results", str(sim_run.store), "--min-positives", "1"]
        args += ["--auth-secrets", str(tmp_path / "secrets.toml"), "--allow", ALLOWED]
        try:
            server = serve_app(args, tmp_path / "server.log", port=port)
            with server as url, chromium_browser() as browser:
                check_logged_out(new_page(browser), url)
                check_allowed_user(new_page(browser), url)
                check_stranger(new_page(browser), url)
        except AppStartError as exc:
            pytest.fail(f"{exc}; server log:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
    assert stub.tokens_issued == [ALLOWED, STRANGER]  # two real code exchanges, PKCE checked
    assert stub.refused == []


def check_logged_out(page, url: str) -> None:
    """Before signing in, every page (even a deep link) is the login page and nothing else."""
    for path in ("", "/per-site-auc", "/case-viewer"):
        page.goto(url + path)
        page.get_by_role("button", name="Log in").wait_for()
        settle(page)
        assert page.locator(CHART).count() == 0
        assert page.get_by_test_id("stSidebarNav").count() == 0
    screenshot(page, SHOTS / "login.png")


def check_allowed_user(page, url: str) -> None:
    sign_in(page, url, ALLOWED)
    page.locator(CHART).first.wait_for(state="visible")
    assert page.get_by_text("Signed in as Alice").count() == 1
    open_page(page, f"{url}/per-site-auc", CHART)  # the cookie carries over to other pages
    page.get_by_role("button", name="Log out").click()
    page.get_by_role("button", name="Log in").wait_for()
    assert page.locator(CHART).count() == 0


def check_stranger(page, url: str) -> None:
    """Signed in at the provider, but not on the allow-list: refused, no data shown."""
    sign_in(page, url, STRANGER)
    page.get_by_text("not on this app's list of users").wait_for()
    assert page.locator(CHART).count() == 0
    screenshot(page, SHOTS / "login-refused.png")
