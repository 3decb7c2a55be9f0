"""Pure drift mathematics: statistics, windows, detectors, episode rules, the error of a prediction and
the drift configuration. Imports neither Kafka nor SQLAlchemy (an import-linter contract)."""
