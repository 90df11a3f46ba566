"""Operations: security settings for the Kafka clients, metrics, logging."""
