"""Celery workers: one module per queue (DESIGN.md section 4). Tasks are thin: validate, call the core, publish."""
