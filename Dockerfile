# One image for every KGB service: `kgb proxy`, `kgb consume winni`, `kgb web`, ...
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY kgb ./kgb
COPY common ./common
COPY proxy ./proxy
COPY consumers ./consumers
COPY schemas ./schemas
COPY web ./web
RUN pip install --no-cache-dir . && mkdir -p /var/lib/kgb/spool && chown -R nobody /var/lib/kgb
USER nobody
ENTRYPOINT ["kgb"]
