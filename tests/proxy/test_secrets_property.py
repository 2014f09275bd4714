"""Property: whatever secret of a built-in kind is planted wherever and however, the events
the proxy builds hold none of it in any stored form (`test_capture.stored_forms`).

A fragment of a secret (a half of its random part) counts as leaked only if the same
exchange with no secret does not hold it too: shrinking would otherwise make a half
"messages" and find it in the request's path. Nor does one the rule's placeholder spells
(`password` of `[REDACTED:url_password]`), which the event holds wherever it took the secret out."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings

from proxy.capture import RequestRecord, ResponseRecorder, request_event, response_event
from tests.plants import Plant, Secret, plants, reply, request_parts
from tests.proxy.test_capture import COMPLETE, POLICY, stored_forms

EXAMPLES = 400


def events_of(plant: Plant) -> list[dict]:
    """The request and response events of the exchange `plant` describes, built as the proxy builds them."""
    parts = request_parts(plant)
    record = RequestRecord(
        method="POST", path=parts.path, query=parts.query, http_version="1.1", headers=parts.headers, body=parts.body
    )
    answer = reply(plant)
    recorder = ResponseRecorder(record, answer.status, [("content-type", answer.content_type), *answer.headers])
    for chunk in answer.body:
        recorder.feed(chunk)
    event, facts = request_event(record, POLICY)
    return [event, response_event(record, recorder.finish(COMPLETE), facts, POLICY)]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plants())
def test_no_planted_secret_survives_in_any_event_field(plant: Plant) -> None:
    events = events_of(plant)
    forms = b"\n".join(stored_forms(event) for event in events)
    control = b"\n".join(stored_forms(event) for event in events_of(replace(plant, secret=Secret(plant.secret.kind, "", "~"))))
    named = f"[REDACTED:{plant.secret.kind}]"
    assert [f for f in plant.secret.exposed if f.encode() in forms and f.encode() not in control and f not in named] == []
    assert plant.secret.kind in events[0]["redactions"] + events[1]["redactions"]
