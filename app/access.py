"""Who may open the app: Streamlit's OpenID Connect login (st.login / st.user / st.logout, the
hospital's identity provider configured in secrets.toml [auth]) and an optional allow-list."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import streamlit as st

from app.settings import AppSettings

logger = logging.getLogger(__name__)

_LOGGED_KEY = "ecl_app_signed_in_as"  # session_state: the sign-in is logged once per session


class AllowListError(ValueError):
    """An allow-list file that cannot be read; the message names it."""


def normalise_entry(entry: str) -> str:
    """'Alice@Hospital.example ' -> 'alice@hospital.example'; '@hospital.example' stays a
    domain entry. Refuses anything else (a typo must not silently admit nobody or everybody)."""
    value = entry.strip().lower()
    local, at, domain = value.rpartition("@")
    if not at or not domain or "." not in domain or " " in value or "@" in local:
        raise AllowListError(
            f"allow-list entry {entry!r} is neither an e-mail address (name@hospital.example) "
            "nor a domain (@hospital.example)"
        )
    return value


def read_allow_file(path: Path) -> tuple[str, ...]:
    """Entries of an allow-list file: one per line, '#' starts a comment."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise AllowListError(f"cannot read the allow-list {path}: {exc}") from exc
    entries = (line.split("#", 1)[0].strip() for line in lines)
    return tuple(normalise_entry(e) for e in entries if e)


def is_allowed(email: object, allowed: Iterable[str], *, email_verified: object = None) -> bool:
    """Whether a signed-in user may open the app.

    No allow-list: every user the identity provider signs in. Otherwise the ID token's `email`
    must equal an entry or end with a '@domain' entry, and must not be marked unverified
    (`email_verified` false: some providers let users type any address).
    """
    entries = tuple(allowed)
    if not entries:
        return True
    if not isinstance(email, str) or email_verified is False or email_verified == "false":
        return False
    address = email.strip().lower()
    return any(address == e or (e.startswith("@") and address.endswith(e)) for e in entries)


def _show_login(provider: str | None) -> None:
    st.title("ECL chest X-ray review")
    st.info("Sign in with your hospital account to open the review.", icon=":material/lock:")
    st.button("Log in", type="primary", on_click=st.login, args=(provider,) if provider else ())


def _show_refusal(email: object) -> None:
    shown = email if isinstance(email, str) and email else "an account without an e-mail address"
    st.error(
        f"You are signed in as {shown}, which is not on this app's list of users. Ask your IT "
        "contact to add you, or log out and sign in with another account.",
        icon=":material/block:",
    )
    st.button("Log out", on_click=st.logout)


def allowed_entries(settings: AppSettings) -> Sequence[str]:
    """The allow-list: --allow entries plus the file's (re-read on every page view, so an edit
    takes effect without a restart)."""
    entries = list(settings.allowed)
    if settings.allow_file is not None:
        entries += read_allow_file(settings.allow_file)
    return entries


def admitted(settings: AppSettings) -> bool:
    """Draw the login (or refusal) page and return False, or return True for a user who may see
    the app. Without `require_login` everyone is admitted (ecl-app decides when that is allowed).
    """
    if not settings.require_login:
        return True
    user = st.user
    if not user.get("is_logged_in", False):
        _show_login(settings.auth_provider)
        return False
    email = user.get("email")
    if not is_allowed(email, allowed_entries(settings), email_verified=user.get("email_verified")):
        logger.warning("refused %s: not on the allow-list", email)
        _show_refusal(email)
        return False
    if st.session_state.get(_LOGGED_KEY) != email:
        st.session_state[_LOGGED_KEY] = email
        logger.info("signed in: %s", email)
    st.sidebar.caption(f"Signed in as {user.get('name') or email}")
    st.sidebar.button("Log out", on_click=st.logout, key="ecl_logout")
    return True
