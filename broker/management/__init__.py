"""See and steer a running broker over HTTP: RabbitMQ's management API, the dashboard, metrics.

``server`` runs the listeners, ``auth`` checks logins and tags, ``api`` answers reads,
``changes`` makes changes, ``views`` renders objects as RabbitMQ's JSON, ``listing`` pages
and sorts lists.

``metrics`` serves Prometheus metrics; ``collector`` reads them off the broker.
"""
