"""Users' uploaded data sets: reading, validating and cataloguing them (no TensorFlow)."""
