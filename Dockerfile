# The galaxy morphology service as a container: TorchServe with the project's archives baked in,
# run in the foreground by deploy/serve_foreground.py on the pod configuration
# (deploy/k8s/base/config.properties: binds 0.0.0.0, token authorisation off; see its comments).
#
#   docker build -t galaxy-morph:1.0-cpu .                              # CPU (the default)
#   docker build --build-arg DEVICE=cuda -t galaxy-morph:1.0-cuda .     # NVIDIA GPUs
#   docker build --build-arg RUN=runs/my-run --build-arg VERSION=2.0 -t galaxy-morph:2.0-cpu .
#   docker run --rm -p 127.0.0.1:8080:8080 galaxy-morph:1.0-cpu         # tokens are off: loopback only
#
# The steps are the Makefile's own: `make setup java` (the venv from the runtime lock requirements.txt,
# then the project itself with --no-deps; LOCK=requirements.txt leaves out the test and benchmark tools;
# Java 17 and the frontend's fixed workflow executor, compiled into the venv) and `make archive`
# (model_store/galaxy-b0.mar, galaxy-b2.mar, galaxy-ensemble.war from the
# checkpoints in RUN, with the serving settings of DEVICE: for cuda bf16, batches of 32, JPEGs decoded on
# the GPU). DEVICE=cpu takes the same pinned torch/torchvision versions from PyTorch's CPU-only wheel
# index (about 3 GB smaller; uv reads the index from UV_EXTRA_INDEX_URL, not pip's variable, and takes
# its 2.14.1+cpu over PyPI's 2.14.1 only with unsafe-best-match); DEVICE=cuda takes PyPI's wheels, which
# carry the CUDA libraries: the node needs only the NVIDIA driver and container toolkit (Kubernetes: the
# NVIDIA device plugin).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG DEVICE=cpu
ARG RUN=checkpoints/demo
ARG VERSION=
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1

RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# The packages pyproject.toml installs (editable, as make setup does) must be here before it runs.
COPY Makefile requirements.txt pyproject.toml ./
COPY galaxy_morph galaxy_morph
COPY galaxy_morph_cli galaxy_morph_cli
COPY handlers handlers
COPY torchserve_ops torchserve_ops
COPY survey survey
COPY prediction prediction
COPY labelling labelling
COPY training training
COPY simulation simulation
COPY dashboard dashboard
RUN case "$DEVICE" in \
      cpu) export UV_EXTRA_INDEX_URL="$TORCH_CPU_INDEX" UV_INDEX_STRATEGY=unsafe-best-match ;; \
      cuda) ;; \
      *) echo "DEVICE must be cpu or cuda, got $DEVICE" >&2; exit 1 ;; \
    esac \
 && make setup java LOCK=requirements.txt \
 && rm -rf /var/lib/apt/lists/* /root/.cache

COPY config.properties ./
COPY deploy deploy
COPY ${RUN} ${RUN}
# The real samples: make archive checks each ONNX export against torch on them; the dashboard's gallery.
COPY samples samples
RUN mkdir -p model_store \
 && make archive RUN=${RUN} VERSION=${VERSION} DEVICE=${DEVICE} LOCK=requirements.txt \
 && ls -l model_store

# The dashboard runs from the same image (deploy/k8s/base/dashboard-deployment.yaml): its pages (copied
# above), the real samples of its gallery (above), and the text it shows from README.md and docs/demo_models.md.
COPY README.md ./
COPY docs/demo_models.md docs/

# Non-root; only logs/ (and /tmp) are written at run time, so the root file system can be read-only.
RUN useradd --uid 1000 --user-group --home-dir /home/model-server --create-home model-server \
 && mkdir -p logs && chown model-server:model-server logs
USER 1000:1000

EXPOSE 8080 8081 8082
# The dashboard, in its own pod (the same image with another command).
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["/app/.venv/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/ping', timeout=4)"]
ENTRYPOINT ["/app/.venv/bin/python", "-m", "deploy.serve_foreground"]
CMD ["--config", "/app/deploy/k8s/base/config.properties", "--ready-file", "/tmp/galaxy-morph-ready"]
