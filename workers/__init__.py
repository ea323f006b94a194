"""Celery: the app, queues and routing, phase tasks, the move canvas, node agent tasks."""
