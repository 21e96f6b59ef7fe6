"""The test harness shared by tests/, bench/ and chaos/: real brokers, bridge processes, workers,
topic readers and order counting. Not part of the shipped package."""
