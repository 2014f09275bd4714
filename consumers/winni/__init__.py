"""`kgb consume winni`: exchange events from Kafka into PostgreSQL tables (schema ``kgb``)."""
