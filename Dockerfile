# Dataflow custom worker container (--sdk_container_image): the pinned stack and this package,
# installed once at build time, so workers start without building or downloading anything and
# run exactly what requirements.txt pins. The recommended way for large runs (README.md,
# "Running on Dataflow"):
#
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/jam-worker:0.1.0 .
#   docker push REGION-docker.pkg.dev/PROJECT/REPO/jam-worker:0.1.0
#   jamdata run --config C -- --runner=DataflowRunner ... \
#     --sdk_container_image=REGION-docker.pkg.dev/PROJECT/REPO/jam-worker:0.1.0
#
# The base image's Beam and Python must be those of the launching environment: apache-beam==2.77.0
# in requirements.txt, Python 3.11 (tests/test_packaging.py checks both against the installed ones).
# Its entrypoint, Beam's worker boot program, is kept.
ARG BEAM_VERSION=2.77.0
FROM apache/beam_python3.11_sdk:${BEAM_VERSION}

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 DS_ACCELERATOR=cpu
WORKDIR /opt/jam

# The dependencies first (their layer is reused while only the code changes), with the storage
# back-ends for gs:// and s3:// paths.
COPY requirements.txt pipelines/worker-requirements.txt ./
RUN pip install -r requirements.txt -r worker-requirements.txt

# The package itself, not editable: configs/ ships inside it as jamdata/configs.
COPY setup.py setup.cfg pyproject.toml README.md ./
COPY jamdata jamdata
COPY jamtrain jamtrain
COPY pipelines pipelines
COPY schemas schemas
COPY configs configs
RUN pip install --no-deps --no-build-isolation . \
    && cd / && python -c "import jamdata, jamtrain, pipelines, schemas, gcsfs, s3fs" \
    && jamdata config show demo > /dev/null && rm -rf /opt/jam
WORKDIR /
