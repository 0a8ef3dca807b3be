"""Per-rank encode results meet on rank 0 through files, however far apart the ranks finish."""
import json

import pytest

from bits_back_diffusion.encoder import gather_stats
from bits_back_diffusion.rank_results import rank_results_path, wait_for_rank_results, write_rank_results


def test_rank_zero_waits_for_a_rank_that_finishes_much_later(tmp_path):
    write_rank_results(str(tmp_path), 0, {"samples": 3})
    naps, logs = [], []

    def sleep(seconds):  # rank 1 finishes after 40 polls of 60 s (40 minutes: past any collective timeout)
        naps.append(seconds)
        if len(naps) == 40:
            write_rank_results(str(tmp_path), 1, {"samples": 2})

    got = wait_for_rank_results(str(tmp_path), 2, poll_seconds=60.0, show_progress=False, log=logs.append,
                                sleep=sleep, report_every=600.0)
    assert got == [{"samples": 3}, {"samples": 2}]
    assert len(naps) == 40
    assert logs and all("waiting for ranks [1]" in line for line in logs)
    assert len(logs) == 3  # one line after 10, 20 and 30 minutes; at 40 the file is there


def test_gather_stats_returns_all_ranks_on_rank_zero_only(tmp_path):
    assert gather_stats({"samples": 5}, str(tmp_path), 1, 2, show_progress=False) is None
    assert gather_stats({"samples": 4}, str(tmp_path), 0, 2, show_progress=False) == [{"samples": 4}, {"samples": 5}]
    assert json.loads(open(rank_results_path(str(tmp_path), 1)).read())["stats"] == {"samples": 5}


def test_a_file_of_another_rank_is_refused(tmp_path):
    write_rank_results(str(tmp_path), 0, {"samples": 1})
    path = rank_results_path(str(tmp_path), 1)
    with open(path, "w") as f:
        json.dump({"rank": 0, "stats": {}}, f)
    with pytest.raises(ValueError, match="not of rank 1"):
        wait_for_rank_results(str(tmp_path), 2, show_progress=False, sleep=lambda s: None)
