# The factory image: Airflow (api-server, scheduler, dag-processor, CPU Celery workers), the MLflow server and
# `factory` itself, with the CPU build of torch. GPU workers use gpu-worker.Dockerfile (NGC TensorRT).
#   docker build -f infra/docker/factory.Dockerfile -t model-factory:0.1.0 .
FROM python:3.12.8-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    AIRFLOW_HOME=/opt/airflow FACTORY_HOME=/var/lib/factory \
    FACTORY_CONFIG=/opt/factory/infra/fleet/factory.fleet.yaml \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/factory/dags AIRFLOW__CORE__LOAD_EXAMPLES=False
RUN apt-get update && apt-get install -y --no-install-recommends git curl && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/factory
COPY pyproject.toml README.md ./
COPY factory_core factory_core
COPY pipelines pipelines
COPY model_registry model_registry
COPY monitoring monitoring
COPY dags dags
COPY infra infra
# torch first and pinned, from the CPU index, so no later resolve pulls the CUDA wheels
RUN pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
 && pip install -e ".[factory]" \
 && python -c "import pipelines, airflow.providers.celery, psycopg2, modelopt.onnx.quantization"
RUN useradd --uid 50000 --gid 0 --home-dir /opt/airflow --create-home airflow \
 && mkdir -p /var/lib/factory && chown -R 50000:0 /var/lib/factory /opt/airflow
USER 50000
