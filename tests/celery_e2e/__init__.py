"""End-to-end tests: stock Celery and kombu, in real processes, against a Leveret subprocess."""
