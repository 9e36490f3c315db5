"""The metrics logger: a JSON-lines file that survives resumes and crashes."""

from __future__ import annotations

from pathlib import Path

from robot_rl.train.logger import Logger, read_metrics


def test_rows_append_across_runs_and_a_cut_off_row_is_skipped(tmp_path: Path) -> None:
    with Logger(tmp_path) as log:
        log.log(1, {"critic/loss": 0.5, "eval/success": 0.25})
        log.log(2, {"critic/loss": float("nan")})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "critic/lo')  # a crash mid-write
    with Logger(tmp_path) as log:  # a resumed run appends
        log.log(4, {"critic/loss": 0.25})
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 4]
    assert rows[0]["eval/success"] == 0.25 and rows[1]["critic/loss"] == "nan"
