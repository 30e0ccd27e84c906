"""Operations library behind scripts/*: local Kafka, Flink cluster, provider simulator."""
