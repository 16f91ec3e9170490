# Galaxy morphology service. `make serve` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
UV_VERSION := 0.13.8

# Training / evaluation
MODEL ?= b0
DATA ?= data/synthetic.h5
EPOCHS ?=
OUT ?= runs/$(MODEL)
RUN ?= checkpoints/demo
# make models: ImageNet weights (1) or random init (0), recipe, comma-separated model specs
# (and INPUT_SIZE=N to train and answer at N px instead of each spec's size)
PRETRAINED ?= 1
RECIPE ?= seed
MODELS ?= b0,b2
# Serving
TS_HOST ?= 127.0.0.1
TS_INFERENCE_PORT ?= 8080
TS_MANAGEMENT_PORT ?= 8081
TS_METRICS_PORT ?= 8082
DASHBOARD_PORT ?= 8501
VERSION ?=
export TS_HOST TS_INFERENCE_PORT TS_MANAGEMENT_PORT TS_METRICS_PORT DASHBOARD_PORT

.PHONY: help setup java browser postgres test soak data demo-data demo-models models train evaluate archive serve stop versions \
        dashboard bench bench-train bench-gpu classify predict similar queue retrain clean

help:
	@echo "make serve        set up, serve the shipped demo models (or RUN=dir), start TorchServe + dashboard"
	@echo "                  [DEVICE=cpu|cuda] serving settings, [TTA=1] answers averaged over 8 flips/rotations"
	@echo "                  [RUNTIME=onnx|torch] where the forward runs (default: onnx on a CPU, torch on a GPU)"
	@echo "make test         set up, run the test suite"
	@echo "make soak         overload and soak TorchServe (minutes; figures in docs/reliability.md)"
	@echo "make stop         stop TorchServe and the dashboard"
	@echo "make data         download Galaxy10_DECals.h5 (2.54 GB) into data/"
	@echo "make demo-data    generate data/synthetic.h5"
	@echo "make demo-models  rebuild the shipped demo models (runs/demo -> checkpoints/demo; minutes on a GPU)"
	@echo "make models DATA=path [RUN=runs/NAME] [EPOCHS=n] [PRETRAINED=1|0] [RECIPE=seed|strong|augmented] [MODELS=b0,b2]"
	@echo "                  train, evaluate (TTA) and archive every model; finished stages are skipped"
	@echo "make train MODEL=b0|b2|convnext DATA=path [EPOCHS=n] [OUT=dir]"
	@echo "make evaluate RUN=dir [DATA=path] [TTA=1]"
	@echo "make archive [RUN=checkpoints/demo] [VERSION=x] [DEVICE=cpu|cuda] [TTA=1]   build model_store/*.mar and the .war"
	@echo "make bench | bench-train | bench-gpu | classify INPUT=... OUT=catalog.csv [MODEL=galaxy-ensemble]"
	@echo "make classify INPUT=positions.csv OUT=catalog.fits [CUTOUT_URL=.../cutout.fits] [RA_COL=RAJ2000]"
	@echo "make predict INPUT=... OUT=catalog.csv|.parquet [MODEL=ensemble|b0|b2] [RAY_ADDRESS=...]   offline, on Ray"
	@echo "                  [EMBEDDINGS=1] (Parquet) each model's embedding; make similar QUERY=img.jpg [INDEX=...]"
	@echo "make queue INPUT=dir|file.h5|positions.csv [LABELS=runs/labels/labels.db] [MC=20]   galaxies for the Review page"
	@echo "make queue INPUT=catalog.csv IMAGES=dir [TOP=1000]   a make classify/predict output's least certain rows"
	@echo "make retrain LABELS=runs/labels/labels.db FROM=checkpoints/demo [VERSION=1.1] [MIX=original.h5] [EPOCHS=5]"
	@echo "                  fine-tune on your labels, compare, register next to the served version"

setup: $(STAMP)

# uv installs the pinned requirements in parallel: about 45 s on a fresh 2-core machine, where pip
# took about 3 min (torch's CUDA wheels alone are 4 GB). LOCK: requirements-dev.txt is the runtime lock
# requirements.txt plus the test and benchmark tools; the Dockerfile sets LOCK=requirements.txt.
LOCK ?= requirements-dev.txt
$(STAMP): requirements.txt $(LOCK) pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q uv==$(UV_VERSION)
	$(PY) -m uv pip install -q --python $(PY) -r $(LOCK)
	$(PY) -m uv pip install -q --python $(PY) --no-deps -e .
	@# The install writes some 5 GB (torch's CUDA build): flush it to disk now, not while the
	@# next command (make test's servers, make serve) runs.
	sync
	touch $@

# TorchServe's frontend is Java 17; javac (a JDK) compiles its fixed workflow executor
# (torchserve_ops/frontend.py) into the venv.
java: setup
	@if java -version 2>&1 | grep -qE 'version "(1[7-9]|2[0-9])' && command -v javac >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Java 17 (openjdk-17-jdk-headless)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jdk-headless; \
	else echo "TorchServe needs Java 17 and javac: sudo apt-get install -y openjdk-17-jdk-headless" >&2; exit 1; fi
	@$(PY) -m torchserve_ops.frontend >/dev/null

# The browser test drives Debian's Chromium (Playwright's own browser download cannot work offline).
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium for the browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "the browser test needs Chromium: sudo apt-get install -y chromium" >&2; exit 1; fi

# The label store's tests start a PostgreSQL server of their own from Debian's binaries. Without them
# those tests are skipped (with this message), so a failed install does not stop make test.
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing postgresql for the label store's tests"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) || \
		echo "could not install postgresql: the label store's PostgreSQL tests will be skipped" >&2; \
	else echo "the label store's PostgreSQL tests need PostgreSQL (skipped without it):" \
		"sudo apt-get install -y postgresql" >&2; fi

# Two workers, one test file each at a time (module fixtures stay whole), one thread per process:
# the suite's work is mostly single-threaded, and two workers with torch's default threads would
# oversubscribe the two cores.
# Bytecode is cached as each module is first imported (uv compiles nothing at install), even where
# the environment sets PYTHONDONTWRITEBYTECODE: every TorchServe worker imports torch again.
test: setup java browser postgres
	env -u PYTHONDONTWRITEBYTECODE OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
		$(PY) -m pytest -q -n 2 --dist loadfile --durations=15

# Not part of make test: minutes of overload and a 10,000-request soak (tests/test_overload.py).
soak: setup java
	GALAXY_SOAK=1 $(PY) -m pytest -q -p no:cacheprovider tests/test_overload.py

data: setup
	$(PY) -m training.download --out data/Galaxy10_DECals.h5

demo-data: setup data/synthetic.h5
data/synthetic.h5:
	$(PY) -m simulation.synthetic --out $@

demo-models: setup
	$(PY) -m training.demo --data data/synthetic_demo.h5 --out runs/demo --ship checkpoints/demo

models: setup
	$(PY) -m training.pipeline --data $(DATA) --models $(MODELS) --pretrained $(PRETRAINED) --recipe $(RECIPE) \
		$(if $(filter command line,$(origin RUN)),--run $(RUN)) $(if $(EPOCHS),--epochs $(EPOCHS)) \
		$(if $(VERSION),--version $(VERSION)) $(if $(INPUT_SIZE),--input-size $(INPUT_SIZE))

train: setup
	$(VENV)/bin/galaxy-morph train --model $(MODEL) --data $(DATA) --out $(OUT) $(if $(EPOCHS),--epochs $(EPOCHS))

# RUN is required here: the shipped checkpoints/demo reports are not to be overwritten by accident.
evaluate: setup
	$(if $(filter file,$(origin RUN)),$(error make evaluate needs RUN=dir (a run with its training data)))
	$(VENV)/bin/galaxy-morph evaluate --run $(RUN) $(if $(filter command line,$(origin DATA)),--data $(DATA)) $(if $(filter-out 0,$(TTA)),--tta)

archive: setup
	$(VENV)/bin/galaxy-morph archive --run $(RUN) --store model_store $(if $(VERSION),--version $(VERSION)) \
		--device $(or $(DEVICE),cpu) $(if $(filter-out 0,$(TTA)),--tta) $(if $(RUNTIME),--runtime $(RUNTIME))

serve: setup java
	RUN=$(RUN) DEVICE=$(or $(DEVICE),cpu) TTA=$(filter-out 0,$(TTA)) RUNTIME=$(RUNTIME) scripts/serve.sh

stop:
	scripts/stop.sh

# make versions ARGS="set-default galaxy-b0 2.0" (see scripts/versions.sh)
versions: setup java
	scripts/versions.sh $(ARGS)

dashboard: setup
	scripts/dashboard.sh

bench: setup java
	$(PY) -m bench.serving

bench-train: setup
	$(PY) -m bench.training

# on a GPU machine: served B0/B2 at concurrency 1, 8, 64 against raw on the same card
bench-gpu: setup java
	$(PY) -m bench.gpu_serving $(if $(DEVICE),--device $(DEVICE))

INPUT ?=
CATALOG ?= catalog.csv
classify: setup
	$(VENV)/bin/galaxy-morph classify --input "$(INPUT)" --out "$(if $(filter command line,$(origin OUT)),$(OUT),$(CATALOG))" \
		--model $(if $(filter command line,$(origin MODEL)),$(MODEL),galaxy-ensemble) $(if $(SERVERS),--servers $(SERVERS)) \
		$(if $(CONCURRENCY),--concurrency $(CONCURRENCY)) $(if $(RULE),--rule $(RULE)) \
		$(if $(CUTOUT_URL),--cutout-url "$(CUTOUT_URL)") $(if $(CUTOUT_LAYER),--layer $(CUTOUT_LAYER)) \
		$(if $(CUTOUT_PIXSCALE),--pixscale $(CUTOUT_PIXSCALE)) $(if $(CUTOUT_SIZE),--size $(CUTOUT_SIZE)) \
		$(if $(CUTOUT_CACHE),--cache-dir "$(CUTOUT_CACHE)") $(if $(RA_COL),--ra-col "$(RA_COL)") \
		$(if $(DEC_COL),--dec-col "$(DEC_COL)") $(if $(ID_COL),--id-col "$(ID_COL)")

# Offline classification on Ray Data (no server): local Ray unless RAY_ADDRESS names a cluster.
# Checkpoints: RUN=dir with b0/ and b2/ (default checkpoints/demo, else runs/demo).
predict: setup
	$(VENV)/bin/galaxy-morph predict --input "$(INPUT)" --out "$(if $(filter command line,$(origin OUT)),$(OUT),$(CATALOG))" \
		--model $(if $(filter command line,$(origin MODEL)),$(MODEL),ensemble) $(if $(RULE),--rule $(RULE)) \
		$(if $(filter command line,$(origin RUN)),--run $(RUN)) $(if $(RAY_ADDRESS),--address $(RAY_ADDRESS)) \
		$(if $(filter-out 0,$(EMBEDDINGS)),--embeddings)

# Queue images for the dashboard's Review page (labels in LABELS, a SQLite file or SQLAlchemy URL): a folder,
# an HDF5 file, a table of sky positions (cutouts), or a catalogue of make classify/predict with IMAGES= its input
LABELS ?= runs/labels/labels.db
queue: setup
	$(VENV)/bin/galaxy-morph queue add --store "$(LABELS)" --input "$(INPUT)" $(if $(MC),--mc-passes $(MC)) \
		$(if $(filter command line,$(origin RUN)),--run $(RUN)) $(if $(SOURCE),--source "$(SOURCE)") \
		$(if $(IMAGES),--images "$(IMAGES)") $(if $(TOP),--top $(TOP)) \
		$(if $(CUTOUT_URL),--cutout-url "$(CUTOUT_URL)") $(if $(CUTOUT_CACHE),--cache-dir "$(CUTOUT_CACHE)") \
		$(if $(RA_COL),--ra-col "$(RA_COL)") $(if $(DEC_COL),--dec-col "$(DEC_COL)") $(if $(ID_COL),--id-col "$(ID_COL)")

# Fine-tune FROM on the labels, compare on held-out labels, archive and register as the next version
# (not the default: scripts/versions.sh promote VERSION, or the Model card page). See training/retrain.py.
FROM ?= checkpoints/demo
retrain: setup
	$(VENV)/bin/galaxy-morph retrain --labels "$(LABELS)" --from "$(FROM)" $(if $(VERSION),--version $(VERSION)) \
		$(if $(MIX),--mix "$(MIX)") $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(filter command line,$(origin MODELS)),--models $(MODELS))

# The k nearest galaxies to an image (default index: the real samples, built by make serve)
INDEX ?= runs/similarity/samples.npz
similar: setup
	$(VENV)/bin/galaxy-morph similar query --index "$(INDEX)" --image "$(QUERY)" --k $(or $(K),5) \
		$(if $(filter command line,$(origin RUN)),--run $(RUN))

clean:
	rm -rf runs logs model_store/*.mar model_store/*.war
