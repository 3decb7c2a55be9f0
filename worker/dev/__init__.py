"""Development tooling: the embedded broker and sample streams. Not used by the services."""
