"""The drift monitor: predictions and labels in, drift alerts and retrain requests out."""
