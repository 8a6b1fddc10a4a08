"""The local stack: a real Kafka cluster (KRaft) and PostgreSQL as local processes."""
