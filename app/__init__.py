"""StreamRec: a Kafka-native, real-time recommendation engine."""

__version__ = "0.1.0"
