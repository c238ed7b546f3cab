"""Who may open the app: the allow-list rules, and the login gate in front of every page
(AppTest with a simulated st.user; the real OIDC flow is in test_login.py)."""

from __future__ import annotations

import pytest

from app.access import AllowListError, is_allowed, normalise_entry, read_allow_file

ALICE = {"is_logged_in": True, "email": "alice@hospital.example", "name": "Alice"}


@pytest.mark.parametrize(
    ("email", "allowed", "verified", "admitted"),
    [
        ("anyone@anywhere.example", (), None, True),  # no list: the provider decides
        ("Alice@Hospital.example", ("alice@hospital.example",), True, True),
        ("bob@hospital.example", ("@hospital.example",), None, True),
        ("bob@evilhospital.example", ("@hospital.example",), None, False),
        ("bob@sub.hospital.example", ("@hospital.example",), None, False),
        ("alice@hospital.example", ("alice@hospital.example",), False, False),
        ("alice@hospital.example", ("alice@hospital.example",), "false", False),
        (None, ("@hospital.example",), None, False),
        ("carol@hospital.example", ("alice@hospital.example",), True, False),
    ],
)  # fmt: skip
def test_allow_list_rules(email, allowed, verified, admitted):
    assert is_allowed(email, allowed, email_verified=verified) is admitted


@pytest.mark.parametrize("entry", ["alice", "@", "alice@", "a b@x.example", "@localhost", ""])
def test_entries_that_are_neither_address_nor_domain_are_refused(entry):
    with pytest.raises(AllowListError):
        normalise_entry(entry)


def test_allow_file_has_comments_and_blank_lines(tmp_path):
    path = tmp_path / "allow.txt"
    path.write_text("# radiology\n\nAlice@Hospital.example\n@partner.example # visiting\n")
    assert read_allow_file(path) == ("alice@hospital.example", "@partner.example")
    with pytest.raises(AllowListError, match="cannot read"):
        read_allow_file(tmp_path / "missing.txt")


def run_as(make_app, store, user, *extra):
    at = make_app("--results", store, "--require-login", *extra)
    at.user = user
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_logged_out_users_see_only_the_login_button(sim_run, make_app):
    at = run_as(make_app, sim_run.store, {"is_logged_in": False})
    assert [b.label for b in at.button] == ["Log in"]
    assert not at.metric and not at.get("vega_lite_chart") and not at.selectbox


def test_allowed_user_sees_the_app_and_a_log_out_button(sim_run, make_app):
    at = run_as(make_app, sim_run.store, ALICE, "--allow", "@hospital.example")
    assert {m.label for m in at.metric} >= {"Status", "Hospitals"}
    assert "Signed in as Alice" in [c.value for c in at.sidebar.caption]
    assert "Log out" in [b.label for b in at.sidebar.button]


def test_user_outside_the_allow_list_is_refused(sim_run, make_app, tmp_path):
    allow = tmp_path / "allow.txt"
    allow.write_text("bob@hospital.example\n")
    at = run_as(make_app, sim_run.store, ALICE, "--allow-file", allow)
    assert "not on this app's list of users" in at.error[0].value
    assert not at.metric and [b.label for b in at.button] == ["Log out"]
    allow.write_text("alice@hospital.example\n")  # re-read on the next page view
    at.run()
    assert {m.label for m in at.metric} >= {"Status"}


def test_a_broken_allow_file_shows_a_message_not_the_app(sim_run, make_app, tmp_path):
    allow = tmp_path / "allow.txt"
    allow.write_text("alice\n")
    at = run_as(make_app, sim_run.store, ALICE, "--allow-file", allow)
    assert "list of users cannot be used" in at.error[0].value and not at.metric


def test_allow_without_login_is_a_settings_error(sim_run, make_app):
    at = make_app("--results", sim_run.store, "--allow", "a@b.example")
    at.run()
    assert "need a login" in at.error[0].value
