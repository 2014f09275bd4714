"""End to end: clients -> kgb proxy -> fake Anthropic, events -> real Kafka -> winni -> real PostgreSQL."""
