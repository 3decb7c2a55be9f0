"""`undertow notify`: drift alerts and model events to webhooks, Slack and Alertmanager (docs/notify.md)."""
