# syntax=docker/dockerfile:1
# Build: docker build -t consent-ledger .
# Run:   docker run -p 8000:8000 -e DATABASE_URL=postgresql://user:pass@db:5432/ledger \
#          -e CONSENT_LEDGER_SECRET_KEY=... consent-ledger

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CONSENT_LEDGER_HOST=0.0.0.0 \
    CONSENT_LEDGER_PORT=8000
RUN useradd --system --uid 10001 --user-group --home-dir /data --create-home ledger
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels consent-ledger \
    && rm -rf /wheels
USER ledger
WORKDIR /data
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"]
CMD ["sh", "-c", "consent-ledger migrate && exec consent-ledger serve"]
