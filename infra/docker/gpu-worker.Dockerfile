# A GPU worker: NVIDIA's NGC TensorRT image (TensorRT 10.13.x, CUDA 13.0, Python 3.12; release 25.10) plus the
# factory. One image serves every architecture; which one a worker builds for is its queue (gpu_sm_XY) and the
# GPU it is given. The build fails if the TensorRT inside is not the major version the factory pins here.
#   docker build -f infra/docker/gpu-worker.Dockerfile -t model-factory-gpu:0.1.0 .
#   docker run --gpus '"device=0"' ... model-factory-gpu:0.1.0 airflow celery worker -q gpu_sm_90 -c 1
FROM nvcr.io/nvidia/tensorrt:25.10-py3

ARG TENSORRT_MAJOR=10
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    AIRFLOW_HOME=/opt/airflow FACTORY_HOME=/var/lib/factory \
    FACTORY_CONFIG=/opt/factory/infra/fleet/factory.fleet.yaml \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/factory/dags AIRFLOW__CORE__LOAD_EXAMPLES=False
WORKDIR /opt/factory
COPY pyproject.toml README.md ./
COPY factory_core factory_core
COPY pipelines pipelines
COPY model_registry model_registry
COPY monitoring monitoring
COPY dags dags
COPY infra infra
# the image's own tensorrt stays; torch's CUDA build for training/AMP on a trainer with a GPU
RUN pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cu130 \
 && pip install -e ".[factory]" \
 && python -c "import tensorrt, sys; v = tensorrt.__version__; print('TensorRT', v); \
sys.exit(0 if v.split('.')[0] == '${TENSORRT_MAJOR}' else f'TensorRT {v}: expected major ${TENSORRT_MAJOR}')" \
 && python -c "import polygraphy, pipelines, airflow.providers.celery"
RUN useradd --uid 50000 --gid 0 --home-dir /opt/airflow --create-home airflow \
 && mkdir -p /var/lib/factory && chown -R 50000:0 /var/lib/factory /opt/airflow
USER 50000
