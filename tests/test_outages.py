"""`common.outages.Outage`: a line when a service goes, a summary a minute, a line when it is back."""

from __future__ import annotations

from common.outages import Health, Outage


def test_many_failures_are_three_lines_and_ready_follows_them() -> None:
    outage = Outage("PostgreSQL (KGB_DATABASE_URL)", summary_every=60)
    lines = [outage.failed(f"refused {i}", now=i * 0.5) for i in range(300)]  # 150 s of failures, 2 a second
    lines.append(outage.recovered(now=150))
    said = [line for line in lines if line]
    assert said == [
        "PostgreSQL (KGB_DATABASE_URL) is away (refused 0); retrying until it answers, nothing is lost",
        "PostgreSQL (KGB_DATABASE_URL) still away after 60s (121 failures; last: refused 120)",
        "PostgreSQL (KGB_DATABASE_URL) still away after 120s (241 failures; last: refused 240)",
        "PostgreSQL (KGB_DATABASE_URL) is back after 150s (300 failures)",
    ]
    assert not outage.away and outage.recovered(now=151) is None


def test_health_lists_what_it_waits_for() -> None:
    health = Health()
    assert health.waiting_for() == []
    health.wait("kafka", "Kafka (KGB_KAFKA_BOOTSTRAP): refused")
    health.wait("start", "starting")
    health.done("start")
    assert health.waiting_for() == ["Kafka (KGB_KAFKA_BOOTSTRAP): refused"]
