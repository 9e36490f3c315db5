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


def test_a_resume_drops_the_rows_after_its_step_and_keeps_what_it_cannot_read(tmp_path: Path) -> None:
    with Logger(tmp_path) as log:
        for step in (5, 10, 15):
            log.log(step, {"critic/loss": float(step)})
    path = tmp_path / "metrics.jsonl"
    path.write_text(path.read_text().replace('{"step": 10', 'garbage\n{"step": 10') + '{"step": 20, "critic/lo')
    with Logger(tmp_path, resume_step=10) as log:  # checkpoint at step 10: the row of 15 goes, unreadable lines stay
        log.log(15, {"critic/loss": -15.0})
    lines = path.read_text().splitlines()
    assert "garbage" in lines  # not ours to judge: left as it was
    rows = read_metrics(path)
    assert [(r["step"], r["critic/loss"]) for r in rows] == [(5, 5.0), (10, 10.0), (15, -15.0)]
    assert not (tmp_path / "metrics.jsonl.partial").exists()
