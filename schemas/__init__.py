"""The event contract: Avro schemas (`*.avsc`), their codec and the registry client.

`schemas.codec` turns records into framed bytes and back; `schemas.registry`
talks to a Confluent-compatible schema registry; `schemas.errors` holds every
error raised here. Producers and consumers use these and never touch Avro bytes.
"""
