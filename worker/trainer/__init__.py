"""The trainer service: retrain requests in, evaluated candidates and model events out."""
