# syntax=docker/dockerfile:1.7
# Multi-stage image for the shopclip server, indexer and monitor (same image, different command).
#   CPU (default):  docker build -t shopclip .
#   Airflow (DAG):  docker build --target airflow -t shopclip-airflow .
#   GPU:            docker build --build-arg TORCH_FLAVOR=cu128 --build-arg FAISS_PACKAGE=faiss-gpu-cu12 -t shopclip:gpu .
# The image installs exactly what `make test` installs (pyproject extras), minus the dev tools.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG TORCH_FLAVOR=cpu
ARG FAISS_PACKAGE=faiss-cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the flavour's index, so the extras below do not pull a different build.
RUN pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/${TORCH_FLAVOR}
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY shopclip shopclip
COPY model model
COPY training training
COPY indexer indexer
COPY server server
COPY client client
COPY registry registry
COPY orchestration orchestration
COPY predlog predlog
COPY monitor monitor
COPY ui ui
COPY proto proto
# build_py generates the gRPC stubs from proto/ inside the wheel.
# monitor brings predlog: `serve --prediction-log`, `corrections`, `monitor` and `ui` (the console) run from this image.
RUN pip install ".[server,training,s3,registry,monitor,ui]" ${FAISS_PACKAGE} \
 && python -c "import shopclip.v1.classification_pb2, shopclip.server, shopclip.indexer, shopclip.registry, \
shopclip.predlog.writer, shopclip.monitor.cli, shopclip.ui.cli"

# The monthly-drop DAG's image: the same install plus Airflow (docker-compose runs its scheduler, DAG processor
# and API server from it, on PostgreSQL metadata).
FROM build AS airflow-build
RUN pip install ".[orchestration]" "apache-airflow[postgres]==3.3.2" asyncpg \
 && python -c "import shopclip.orchestration.drop_flow, airflow.sdk"

FROM python:${PYTHON_VERSION}-slim AS airflow
# Tesseract + French data: retraining fits the OCR view on the words read on product images (model/ocr.py).
RUN apt-get update && apt-get install -y --no-install-recommends tesseract-ocr tesseract-ocr-fra \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 shopclip \
 && mkdir -p /opt/airflow /data/index /data/catalogue /data/work /data/registry \
 && chown -R shopclip:shopclip /opt/airflow /data
COPY --from=airflow-build /opt/venv /opt/venv
COPY --chown=shopclip:shopclip orchestration/dags /opt/airflow/dags
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/airflow/dags AIRFLOW__CORE__LOAD_EXAMPLES=False
USER shopclip
WORKDIR /home/shopclip
ENTRYPOINT ["airflow"]
CMD ["scheduler"]

# Last, so a plain `docker build .` gives the server/indexer image.
FROM python:${PYTHON_VERSION}-slim AS runtime
# Tesseract + French data: Classify reads the words on the image of a product without text (model/ocr.py).
RUN apt-get update && apt-get install -y --no-install-recommends tesseract-ocr tesseract-ocr-fra \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 shopclip \
 && mkdir -p /data/index /data/catalogue /data/drops /data/prediction-log-spill /data/store-cache /data/registry \
    /models \
 && chown -R shopclip:shopclip /data /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SHOPCLIP_BUNDLE=/models/current \
    SHOPCLIP_INDEX_ROOT=/data/index \
    SHOPCLIP_CATALOGUE=/data/catalogue \
    SHOPCLIP_PORT=50051 \
    SHOPCLIP_METRICS_PORT=9100
USER shopclip
WORKDIR /home/shopclip
EXPOSE 50051 9100 8501
# SERVING only once model and index are loaded (grpc.health.v1), so orchestration waits for a real readiness.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD python -c "import grpc,sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; \
s=g.HealthStub(grpc.insecure_channel('localhost:50051')).Check(h.HealthCheckRequest(service=''), timeout=4); \
sys.exit(0 if s.status == h.HealthCheckResponse.SERVING else 1)"
STOPSIGNAL SIGTERM
ENTRYPOINT ["shopclip"]
CMD ["serve"]
