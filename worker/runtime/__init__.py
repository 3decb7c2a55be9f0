"""What every consuming service shares: the exactly-once consume loop, the checkpoint, positions,
transport, topics, settings and the event contracts."""
