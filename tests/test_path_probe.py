"""bench/path_probe.py's spans: what each stage of a first byte is charged with."""

from __future__ import annotations

from pathlib import Path

import orjson

from bench.path_probe import SPANS, TOTAL, Marks


def marked(**at_us: int) -> Marks:
    marks = Marks()
    marks.at = {name: value * 1000 for name, value in at_us.items()}
    marks.close()
    return marks


def spans_us(marks: Marks) -> dict[str, list[float]]:
    return {name: [value / 1000 for value in values] for name, values in marks.samples.items()}


def test_a_body_piece_that_came_after_the_head_is_waited_for_on_the_upstreams_time() -> None:
    marks = marked(arrival=0, handler=100, sending=250, head=900, built=980, piece=1500, writing=1600, out=1650)
    spans = spans_us(marks)
    assert spans[SPANS[4][0]] == [100]  # from the piece's arrival, not the answer's building
    assert spans[TOTAL] == [100 + 150 + 80 + 100 + 50]  # the upstream's 650 us are not the relay's


def test_a_piece_that_came_with_the_head_counts_from_the_answer_built() -> None:
    spans = spans_us(marked(arrival=0, handler=50, sending=90, head=400, piece=401, built=450, writing=470, out=500))
    assert spans[SPANS[4][0]] == [20]
    assert spans[TOTAL] == [50 + 40 + 50 + 20 + 30]


def test_an_exchange_missing_a_mark_is_left_out() -> None:
    marks = marked(arrival=0, handler=50, sending=90, head=400, built=450)  # never written to the client
    assert all(values == [] for values in marks.samples.values())


def test_a_dump_writes_the_spans_in_nanoseconds_and_starts_again(tmp_path: Path) -> None:
    marks = marked(arrival=0, handler=1, sending=2, head=3, piece=3, built=4, writing=5, out=6)
    out = tmp_path / "spans.json"
    marks.dump(out)
    written = orjson.loads(out.read_bytes())
    assert written[TOTAL] == [5000] and written[SPANS[2][0]] == [1000]
    assert all(values == [] for values in marks.samples.values())
