"""Subgroup attributes (sex, age, view) from real DICOM headers and from labels.csv columns."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from dicom_factory import gradient_image, label_row, make_dataset, write

from data_tools.labels import LABEL_COLUMNS
from hospital_node.data.attributes import parse_age, parse_sex, parse_view, read_attributes


def _site(root: Path, headers: list[dict[str, str]], extra: list[dict[str, str]]) -> list[str]:
    """A site whose i-th DICOM carries headers[i] and whose label row carries extra[i]."""
    rows, uids = [], []
    for i, (tags, columns) in enumerate(zip(headers, extra, strict=True)):
        ds = make_dataset(gradient_image(), name=f"{root.name}-{i}")
        for keyword, value in tags.items():
            setattr(ds, keyword, value)
        if "ViewPosition" not in tags:
            del ds.ViewPosition
        rel = f"dicom/{i}.dcm"
        write(ds, root / rel)
        rows.append({**label_row(ds, rel, split="test"), **columns})
        uids.append(str(ds.SOPInstanceUID))
    names = [*LABEL_COLUMNS, *sorted({k for c in extra for k in c})]
    with (root / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=names)
        writer.writeheader()
        for row in rows:  # findings default to 0, the attribute columns to empty
            writer.writerow({c: row.get(c, "0" if c in LABEL_COLUMNS else "") for c in names})
    return uids


def test_attributes_come_from_the_header_unless_labels_csv_gives_them(tmp_path):
    headers = [
        {"PatientSex": "F", "PatientAge": "067Y", "ViewPosition": "PA"},
        {"PatientSex": "M", "PatientAge": "018M", "ViewPosition": "AP"},
        {"PatientSex": "O", "ViewPosition": "LL"},
        {},
        {"PatientSex": "M", "PatientAge": "045Y", "ViewPosition": "PA"},
    ]
    extra = [{}, {}, {}, {}, {"sex": "female", "age": "81", "view_position": "AP"}]
    uids = _site(tmp_path / "site", headers, extra)

    found = read_attributes(tmp_path / "site", [*uids, "1.2.3.not.listed"])

    assert found.sex == ("F", "M", "other", "unknown", "F", "unknown")
    assert found.age_years[0] == 67 and found.age_years[1] == pytest.approx(1.5)
    assert found.age_years[2:4] == (None, None) and found.age_years[4] == 81
    assert found.view_position == ("PA", "AP", "other", "unknown", "AP", "unknown")
    assert found.groups()["age_band"] == ("60-79", "0-17", "unknown", "unknown", "80+", "unknown")


def test_a_missing_table_or_unreadable_file_gives_unknown_never_an_error(tmp_path):
    assert read_attributes(tmp_path / "nowhere", ["1.2"]).sex == ("unknown",)
    uids = _site(tmp_path / "site", [{"PatientSex": "F"}], [{}])
    (tmp_path / "site" / "dicom" / "0.dcm").write_bytes(b"not a DICOM file")
    assert read_attributes(tmp_path / "site", uids).sex == ("unknown",)


@pytest.mark.parametrize(
    ("value", "years"),
    [("045Y", 45), ("006M", 0.5), ("002W", 14 / 365.25), ("010D", 10 / 365.25), ("52", 52),
     ("", None), ("abc", None), ("999Y", 999), ("-4", None), ("200", None)],
)  # fmt: skip
def test_dicom_age_strings(value, years):
    parsed = parse_age(value)
    assert parsed == (None if years is None else pytest.approx(years))


def test_sex_and_view_values():
    assert [parse_sex(v) for v in ("M", "f", "Male", "O", "", None)] == [
        "M", "F", "M", "other", "unknown", "unknown"
    ]  # fmt: skip
    assert [parse_view(v) for v in ("PA", "ap", "LATERAL", "", None)] == [
        "PA", "AP", "other", "unknown", "unknown"
    ]  # fmt: skip
