"""Everything that talks to Kafka: settings, contracts, transport, the monitor and the CLI."""
