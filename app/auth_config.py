"""ecl-app's login configuration: find and check the secrets.toml [auth] table that Streamlit's
OpenID Connect login reads, before the server starts."""

from __future__ import annotations

import importlib.util
import ipaddress
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROVIDER_KEYS = ("client_id", "client_secret", "server_metadata_url")
MIN_COOKIE_SECRET = 32
SECRET_HINT = "python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"


class AuthConfigError(ValueError):
    """A login configuration that cannot work; the message says what to change."""


@dataclass(frozen=True)
class AuthConfig:
    """A checked [auth] table: where it is and which provider st.login() must use."""

    secrets: Path
    provider: str | None  # None: the [auth] table itself holds the provider
    redirect_uri: str


def is_loopback(address: str) -> bool:
    """True for addresses only this computer can reach (127.0.0.0/8, ::1, localhost)."""
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def find_auth_secrets(explicit: Path | None, cwd: Path, home: Path) -> Path | None:
    """The secrets file with the login: --auth-secrets, else the first of Streamlit's own places
    (./.streamlit/secrets.toml, ~/.streamlit/secrets.toml) that holds an [auth] table."""
    if explicit is not None:
        return explicit
    for candidate in (cwd / ".streamlit" / "secrets.toml", home / ".streamlit" / "secrets.toml"):
        try:
            if "auth" in tomllib.loads(candidate.read_text(encoding="utf-8")):
                return candidate
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            continue
    return None


def _provider(auth: dict[str, Any], chosen: str | None) -> str | None:
    """The provider st.login() must name: None when [auth] holds client_id & co itself."""
    named = {k: v for k, v in auth.items() if isinstance(v, dict) and k != "client_kwargs"}
    if chosen is not None:
        if chosen not in named:
            raise AuthConfigError(f"[auth.{chosen}] is missing (--auth-provider {chosen})")
        table, where = named[chosen], f"[auth.{chosen}]"
    elif any(key in auth for key in PROVIDER_KEYS) or not named:
        table, where = auth, "[auth]"
    elif len(named) == 1:
        chosen = next(iter(named))
        table, where = named[chosen], f"[auth.{chosen}]"
    else:
        raise AuthConfigError(
            f"[auth] names several providers ({', '.join(sorted(named))}); choose one with "
            "--auth-provider NAME"
        )
    missing = [key for key in PROVIDER_KEYS if not table.get(key)]
    if missing:
        raise AuthConfigError(f"{where} lacks {', '.join(missing)} (from the identity provider)")
    if "_" in (chosen or ""):
        raise AuthConfigError(f"provider name {chosen!r}: Streamlit refuses '_' in it")
    return chosen


def load_auth_config(path: Path, provider: str | None = None) -> AuthConfig:
    """Read and check `path`'s [auth] table (the keys Streamlit's st.login needs, a strong
    cookie secret, a redirect URI ending in /oauth2callback) and that Authlib is installed."""
    try:
        auth = tomllib.loads(path.read_text(encoding="utf-8")).get("auth")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AuthConfigError(f"cannot read the login configuration {path}: {exc}") from exc
    if not isinstance(auth, dict):
        raise AuthConfigError(f"{path} has no [auth] table (docs/hospital-it.md, section 17)")
    redirect = str(auth.get("redirect_uri") or "")
    if not redirect.endswith("/oauth2callback"):
        raise AuthConfigError(
            f"[auth] redirect_uri {redirect or '(missing)'} must be the app's public address "
            "followed by /oauth2callback, e.g. https://xray-review.hospital.example/oauth2callback"
        )
    if len(str(auth.get("cookie_secret") or "")) < MIN_COOKIE_SECRET:
        raise AuthConfigError(
            f"[auth] cookie_secret must be a random string of at least {MIN_COOKIE_SECRET} "
            f"characters (it signs the login cookie): make one with {SECRET_HINT}"
        )
    chosen = _provider(auth, provider)
    missing = [m for m in ("authlib", "httpx") if importlib.util.find_spec(m) is None]
    if missing:
        raise AuthConfigError(
            f"the login needs {' and '.join(missing)}: pip install 'streamlit[auth]' "
            "(part of the ecl-hospitals app extra)"
        )
    return AuthConfig(secrets=path, provider=chosen, redirect_uri=redirect)
