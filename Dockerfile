# The Undertow services (monitor, trainer, serve) in one image; docker-compose.yml runs each with its command.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY models ./models
COPY storage ./storage
# Links to the three folders above: the package the image installs is `undertow` alone.
COPY undertow ./undertow
RUN pip install --no-cache-dir '.[postgres]' && useradd --create-home undertow \
    && mkdir -p /var/lib/undertow/artifacts && chown undertow /var/lib/undertow/artifacts
USER undertow
ENTRYPOINT ["undertow"]
CMD ["--help"]
