# syntax=docker/dockerfile:1
# Two Grand Challenge containers from one file:
#   docker build --target evaluation -t verse-gc-evaluation .
#   docker build --target algorithm  -t verse-gc-algorithm  .
# (./build.sh does both.) Both run as a non-root user with nothing fetched at run time: GC runs
# them with no network. Dependencies come from pyproject.toml, at the versions constraints.txt pins (the
# same file the venv installs with), in a layer that only a change of those two files rebuilds.

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    MPLCONFIGDIR=/tmp/matplotlib
RUN groupadd --system user && useradd --system --create-home --no-log-init --gid user user
WORKDIR /opt/app
COPY pyproject.toml constraints.txt docker/requirements.py /opt/build/

# ---------------------------------------------------------------- evaluation (organisers)
FROM base AS evaluation
RUN python /opt/build/requirements.py /opt/build/pyproject.toml evaluation > /opt/build/requirements.txt \
    && python -m pip install -r /opt/build/requirements.txt -c /opt/build/constraints.txt
COPY pyproject.toml README.md LICENSE /opt/app/
COPY spine /opt/app/spine
COPY evaluation /opt/app/evaluation
RUN python -m pip install --no-deps /opt/app && rm -rf /opt/app/build
# the report's header names the evaluator's commit (no .git in the image; build.sh passes it)
ARG VERSE_GC_COMMIT=""
ENV VERSE_GC_COMMIT=${VERSE_GC_COMMIT}
USER user
ENTRYPOINT ["python", "-m", "evaluation"]

# ---------------------------------------------------------------- algorithm (participants)
FROM base AS algorithm
# ONNX Runtime with its CUDA and cuDNN wheels: the CUDA provider on GC's GPUs, the CPU otherwise.
RUN python /opt/build/requirements.py /opt/build/pyproject.toml algorithm-gpu > /opt/build/requirements.txt \
    && python -m pip install -r /opt/build/requirements.txt -c /opt/build/constraints.txt
# exec: GC runs the entrypoint once per case; invoke: it starts the server on 127.0.0.1:4743.
ARG API_METHOD=exec
LABEL org.grand-challenge.api-method="${API_METHOD}"
ENV VERSE_GC_API_METHOD=${API_METHOD}
COPY pyproject.toml README.md LICENSE /opt/app/
COPY spine /opt/app/spine
COPY algorithm /opt/app/algorithm
RUN python -m pip install --no-deps /opt/app && rm -rf /opt/app/build \
    && python -c "import algorithm, onnxruntime; print(onnxruntime.get_available_providers())"
USER user
ENTRYPOINT ["python", "-m", "algorithm"]
