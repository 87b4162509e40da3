"""TLE reading: the real file, accepted variants, and malformed input that must name file and line."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from topologies.errors import ConfigError
from topologies.tle import TleRecord, load_tle, parse_tle, tle_checksum

DATA = Path(__file__).resolve().parents[2] / "topologies" / "data" / "starlink-2023-07.tle"

NAME = "STARLINK-1007"
L1 = "1 44713U 19074A   23198.31707558  .00000584  00000+0  58057-4 0  9994"
L2 = "2 44713  53.0547 204.8335 0000977  90.1304 269.9797 15.06399147203267"
L1B = "1 44714U 19074B   23199.29111362  .00001226  00000+0  10120-3 0  9997"
L2B = "2 44714  53.0539 200.4639 0000996  78.6811 281.4290 15.06396840203414"


def _with_checksum(line: str) -> str:
    """Replace the checksum digit so that only the intended defect remains."""
    return line[:68] + str(tle_checksum(line))


def test_real_file() -> None:
    records = load_tle(DATA)
    assert len(records) == 4428
    first = records[0]
    assert isinstance(first, TleRecord)
    assert (first.name, first.line1, first.line2, first.line_no) == (NAME, L1, L2, 1)
    assert first.file == str(DATA)
    assert records[1].line_no == 4
    assert first.catalog_number == "44713"
    assert first.inclination_deg == pytest.approx(53.0547)
    assert first.raan_deg == pytest.approx(204.8335)
    assert first.eccentricity == pytest.approx(0.0000977)
    assert first.mean_motion_rev_day == pytest.approx(15.06399147)
    # 2023 day 198.31707558 = 17 July 07:36:35.330 UTC
    assert abs((first.epoch - datetime(2023, 7, 17, 7, 36, 35, 330112, tzinfo=UTC)).total_seconds()) < 1e-5


def test_checksum_rule() -> None:
    assert tle_checksum(L1) == 4 and tle_checksum(L2) == 7
    assert tle_checksum("1 " + "-" * 66 + "0") == 7  # the digit 1 and 66 dashes


def test_two_and_three_line_mixed_with_blanks_crlf_and_trailing_space() -> None:
    text = f"\r\n{NAME}  \r\n{L1}   \r\n{L2}\r\n\r\n{L1B}\r\n{L2B}\t\r\n0 STARLINK-1009\r\n{L1}\r\n{L2}\r\n"
    records = parse_tle(text, source="mixed.tle")
    assert [r.name for r in records] == [NAME, "44714", "STARLINK-1009"]
    assert [r.line_no for r in records] == [2, 6, 8]
    assert records[0].line1 == L1 and records[1].line2 == L2B
    assert all(r.file == "mixed.tle" for r in records)


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_tle(text, source="bad.tle")
    return info.value


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        # wrong line number prefix on the second data line
        (f"{NAME}\n{L1}\n3{L2[1:]}\n", 3, "expected TLE line 2"),
        # line 1 too short
        (f"{NAME}\n{L1[:60]}\n{L2}\n", 2, "must be 69 characters"),
        # line 2 too long (a stray digit, not whitespace)
        (f"{NAME}\n{L1}\n{L2}5\n", 3, "must be 69 characters"),
        # bad checksum
        (f"{NAME}\n{L1[:68]}5\n{L2}\n", 2, "checksum digit is 5, expected 4"),
        # catalog numbers differ
        (f"{NAME}\n{L1}\n{_with_checksum(L2.replace('44713', '44714'))}\n", 3, "expected the same number"),
        # non-numeric field (inclination)
        (f"{NAME}\n{L1}\n{_with_checksum(L2.replace(' 53.0547', ' 53.O547'))}\n", 3, "columns 9-16 (inclination"),
        # non-numeric field (bstar)
        (f"{NAME}\n{_with_checksum(L1.replace(' 58057-4', ' 58O57-4'))}\n{L2}\n", 2, "columns 54-61 (drag"),
        # fields run together: a missing blank column
        (f"{NAME}\n{L1}\n{_with_checksum(L2[:16] + 'x' + L2[17:])}\n", 3, "expected a blank in column 17"),
        # line 2 without line 1
        (f"{NAME}\n{L2}\n", 2, "line 2 without a line 1"),
        # line 1 followed by a name line
        (f"{L1}\n{NAME}\n{L2}\n", 2, "expected TLE line 2"),
        # truncated: file ends after line 1
        (f"{NAME}\n{L1}\n", 2, "expected a line 2"),
        # truncated: file ends after a name line
        (f"{NAME}\n{L1}\n{L2}\nSTARLINK-1008\n", 4, "expected TLE lines 1 and 2"),
        # two name lines in a row
        (f"{NAME}\nSTARLINK-1008\n{L1}\n{L2}\n", 2, "expected TLE line 1"),
        # mean motion zero: parses as numbers, but is no orbit
        (f"{NAME}\n{L1}\n{_with_checksum(L2[:52] + ' 0.00000000' + L2[63:])}\n", 3, "mean motion > 0"),
    ],
)
def test_malformed_tle_names_file_line_and_expectation(text: str, line: int, expected: str) -> None:
    err = _error(text)
    assert err.file == "bad.tle" and err.line == line
    message = str(err)
    assert message.startswith(f"bad.tle:{line}: ")
    assert expected in message


def test_empty_input_is_an_error() -> None:
    for text in ("", "\n\n  \n"):
        err = _error(text)
        assert err.file == "bad.tle" and "no TLE element sets" in str(err)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_tle(tmp_path / "nope.tle")
    assert "nope.tle" in str(info.value)


def test_load_file_reports_its_path(tmp_path: Path) -> None:
    path = tmp_path / "one.tle"
    path.write_text(f"{NAME}\n{L1}\n{L2}\n\n{L1B}\n{L2B[:-1]}0\n")
    with pytest.raises(ConfigError) as info:
        load_tle(path)
    assert str(info.value).startswith(f"{path}:6: ")


def test_latest_epoch_reads_the_line_1_epochs(tmp_path: Path) -> None:
    from topologies.tle import latest_epoch

    latest = latest_epoch(DATA)
    assert latest is not None
    # the same instant as sgp4's parse of the latest set (the day fraction has 8 decimals: < 1 ms)
    assert abs((latest - max(r.epoch for r in load_tle(DATA))).total_seconds()) < 1e-3
    assert latest_epoch(tmp_path / "missing.tle") is None
    (tmp_path / "junk.tle").write_text("not a TLE\n")
    assert latest_epoch(tmp_path / "junk.tle") is None
