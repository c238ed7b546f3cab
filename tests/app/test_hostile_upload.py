"""The case viewer's upload path on hostile files: each refused with the advice for its reason."""

from __future__ import annotations

import pytest

from app.launch import max_upload_megabytes
from app.viewer import _ADVICE, Case, CaseError, load_case
from data_tools.hostile import KINDS, hostile_files
from data_tools.hostile_kinds import LOADED
from hospital_node.data.dicom import DEFAULT_LIMITS, REASONS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_every_reason_has_advice_for_the_clinician():
    assert set(_ADVICE) == set(REASONS)


def test_uploads_over_the_file_limit_never_reach_the_app():
    assert max_upload_megabytes() * 2**20 >= DEFAULT_LIMITS.max_file_bytes
    assert (max_upload_megabytes() - 1) * 2**20 < DEFAULT_LIMITS.max_file_bytes


def test_each_hostile_upload_is_refused_with_its_advice_or_shown():
    seen = set()
    for hostile in hostile_files(len(KINDS), seed=3, small=True):
        if hostile.size > max_upload_megabytes() * 2**20:
            continue  # the upload widget refuses it before the app reads it
        seen.add(hostile.kind)
        try:
            case = load_case(hostile.data)
        except CaseError as exc:
            reason = exc.detail.split(":", 1)[0]
            assert reason in hostile.expected, f"{hostile.kind}: {exc.detail}"
            assert exc.message == _ADVICE[reason]
        else:
            assert LOADED in hostile.expected, f"{hostile.kind} was shown"
            assert isinstance(case, Case) and case.image.ndim == 2
    assert len(seen) >= len(KINDS) - 1
