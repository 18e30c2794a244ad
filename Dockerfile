# Leveret in a container: docker build -t leveret . && docker run -p 5672:5672 leveret
# Settings come from LEVERET_* variables (or a config file: mount it and set LEVERET_CONFIG).
FROM python:3.12-slim

WORKDIR /src
COPY pyproject.toml README.md ./
COPY leveret ./leveret
COPY broker ./broker
COPY protocol ./protocol
RUN pip install --no-cache-dir --disable-pip-version-check . \
    && rm -rf /src \
    && useradd --system --home-dir /var/lib/leveret --shell /usr/sbin/nologin leveret \
    && install -d -o leveret -g leveret /var/lib/leveret /var/lib/leveret/data

USER leveret
WORKDIR /var/lib/leveret
# guest may only log in from inside the container (as in RabbitMQ): set a user for clients
# outside, e.g. docker run -e LEVERET_DEFAULT_USER=app -e LEVERET_DEFAULT_PASS=secret ...
ENV LEVERET_HOST=0.0.0.0 \
    LEVERET_PORT=5672 \
    LEVERET_DATA_DIR=/var/lib/leveret/data \
    PYTHONUNBUFFERED=1
# Created above and owned by leveret, so a new volume mounted here is writable by it.
VOLUME /var/lib/leveret/data
EXPOSE 5672

# The broker itself answers: an AMQP protocol header gets a connection.start (no login).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["leveret", "check", "--timeout", "5"]

# docker stop sends SIGTERM: clients are closed with 320 CONNECTION_FORCED, the store is
# flushed, exit 0 (well within docker's 10 s grace period).
ENTRYPOINT ["leveret"]
CMD ["serve"]
