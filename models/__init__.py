"""The ML-model lifecycle, free of Kafka: reference profiles, registry, model cards."""
