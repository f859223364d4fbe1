"""Celery workers that train Keras models with sampled Adam configurations."""
