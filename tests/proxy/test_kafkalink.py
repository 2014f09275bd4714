from proxy.kafkalink import KafkaLink
from proxy.settings import CaptureSettings
from schemas.codec import MCP, Encoder, confluent_header, load_schema, single_object_encoder


def test_an_event_the_relay_encoded_single_object_is_sent_in_the_links_framing() -> None:
    link = KafkaLink(CaptureSettings.from_env({}), None)
    link.encoders[MCP] = Encoder(load_schema(MCP), confluent_header(7))  # as once the registry has answered
    body = bytes(range(256)) * 4
    reframed = link.reframe(MCP, single_object_encoder(MCP).header + body)
    assert type(reframed) is bytes  # what the producer copies into its batch
    assert reframed == confluent_header(7) + body
