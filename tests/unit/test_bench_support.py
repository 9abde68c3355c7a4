"""Pure helpers of the benchmarks."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import harness
from app.bench.pipeline import first, in_turn, summarise_profile
from app.harness import WorkerRun


def test_profile_summary_counts_inclusive_and_self_time(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text(
        "run (loop.py:1);process_batch (app/worker/agents.py:10);recommend (app/core/r.py:5) 6\n"
        "run (loop.py:1);process_batch (app/worker/agents.py:10) 2\n"
        "run (loop.py:1);poll (aiokafka/consumer.py:3) 2\n"
    )
    text = summarise_profile(raw)
    assert text.startswith("10 samples")
    inclusive, own = text.split("self (")
    assert "100.0%  run (loop.py)" in inclusive
    assert " 80.0%  process_batch (agents.py)" in inclusive
    assert " 60.0%  recommend (r.py)" in own
    assert " 20.0%  poll (consumer.py)" in own


def test_a_run_of_several_workers_gives_each_its_own_port_and_data_and_sums_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = WorkerRun("127.0.0.1:9", tmp_path, 4, name="replay").with_workers(3)
    assert len(set(run.base_urls)) == 3
    assert run.base_urls[0] == run.base_url
    assert run.metrics_urls[0] == run.metrics_url
    folders = [run.env["STREAMREC_DATA_DIR"]] + [m["STREAMREC_DATA_DIR"] for m in run._members]
    assert len(set(folders)) == 3
    processed = {url: {("streamrec_input_records_total", (("topic", "events"),)): 10.0 * n}
                 for n, url in enumerate(run.metrics_urls, start=1)}
    asked: list[str] = []

    def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        base, _, query = url.partition("?")
        asked.append(query)
        return processed[base]

    monkeypatch.setattr(harness, "scrape", scrape)
    assert run.processed() == 60.0
    assert set(asked) == {"name%5B%5D=streamrec_input_records_total"}   # that counter alone
    assert run.total("streamrec_input_records_total", topic="events") == 60.0
    single = WorkerRun("127.0.0.1:9", tmp_path, 4)
    assert single.metrics_urls == [single.metrics_url]              # one worker by default
    with pytest.raises(ValueError, match="at least one worker"):
        run.with_workers(0)


def test_a_variant_can_be_timed_first_and_the_rest_keep_their_order() -> None:
    variants = {"ceiling": 1, "streamrec": 2, "global": 3, "exactly-once": 4}
    assert list(first(variants, "global")) == ["global", "ceiling", "streamrec", "exactly-once"]
    assert first(variants, "global")["global"] == 3


def test_users_taken_in_turn_keep_their_own_order_and_leave_out_unseen_users() -> None:
    stream = [(b"a", b"1", "a1"), (b"a", b"2", "a2"), (b"a", b"3", "a3"), (b"b", b"1", "b1"),
              (b"c", b"1", "c1"), (b"b", b"2", "b2")]
    assert [i for _, _, i in in_turn(stream, {b"a", b"b"}, 10)] == ["a1", "b1", "a2", "b2",
                                                                    "a3"]
    assert [i for _, _, i in in_turn(stream, {b"a", b"b", b"c"}, 4)] == ["a1", "b1", "c1",
                                                                         "a2"]


def test_broker_bytes_are_read_from_the_log_segments_and_grouped_by_destination(
        tmp_path: Path) -> None:
    from app.bench.pipeline import broker_written
    from app.broker.apache import topic_log_bytes
    from app.settings import Settings

    def segment(folder: str, size: int, name: str = "00000000000000000000.log") -> None:
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / name).write_bytes(b"x" * size)

    segment("bench-latency-user-state-changelog-0", 100)
    segment("bench-latency-user-state-changelog-3", 50)
    segment("recommendations-1", 10)
    segment("events-0", 1_000)
    segment("__consumer_offsets-2", 7)
    (tmp_path / "bench-latency-user-state-changelog-0" / "00000000000000000000.index"
     ).write_bytes(b"i" * 4096)   # indexes are preallocated: not records
    (tmp_path / "meta.properties").write_text("node.id=1")
    before = topic_log_bytes(tmp_path)
    assert before == {"bench-latency-user-state-changelog": 150, "recommendations": 10,
                      "events": 1_000, "__consumer_offsets": 7}
    segment("bench-latency-user-state-changelog-0", 300, "00000000000000000123.log")
    segment("recommendations-1", 210)
    segment("events-0", 9_000)
    segment("examples-bench-latency-0", 40)
    written = broker_written(before, topic_log_bytes(tmp_path), 20,
                             Settings(topic_events="events",
                                      topic_recommendations="recommendations"))
    assert written == {"broker_bytes_per_event": (300 + 200 + 40) / 20,
                       "broker_bytes_per_event:user-state": 15.0,
                       "broker_bytes_per_event:recommendations": 10.0,
                       "broker_bytes_per_event:examples-bench-latency": 2.0}
