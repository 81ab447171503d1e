# taskrank: one image for the API and the workers (the command picks the role).
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 \
    TASKRANK_DATA_DIR=/data TASKRANK_HOST=0.0.0.0
WORKDIR /app
RUN useradd --create-home --uid 1000 taskrank && mkdir -p /data && chown taskrank /data
COPY pyproject.toml README.md ./
COPY app ./app
COPY worker ./worker
COPY embeddings ./embeddings
COPY library ./library
# torch==2.13.0 is pinned; on a CUDA host install the matching CUDA wheel instead of the CPU one.
RUN pip install --upgrade pip && pip install .
USER taskrank
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status == 200 else 1)"
CMD ["taskrank", "serve", "--no-worker", "--host", "0.0.0.0", "--port", "8000"]
