# medsight: `make demo` runs the main job end to end; `make test` installs what the tests need and runs them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# The one data setting: point it at the shared data beside this checkout when that exists.
ifneq ($(wildcard ../shared/data),)
export MEDSIGHT_DATA ?= $(abspath ../shared/data)
endif
export MEDSIGHT_CACHE ?= $(abspath .medsight_cache)
export PYTHONUNBUFFERED := 1

DEMO_OUT ?= demo_out

.PHONY: demo test venv lint typecheck unit tools clean benchmarks web

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The review workstation (web/workstation): npm fetches the pinned packages (package-lock.json) and vite builds
# dist/, which `medsight serve` serves under /workstation/. Neither node_modules nor dist is committed.
WEB := web/workstation
web: $(WEB)/dist/index.html

$(WEB)/dist/index.html: $(WEB)/package.json $(WEB)/package-lock.json $(WEB)/index.html $(WEB)/vite.config.ts \
		$(WEB)/tsconfig.json $(wildcard $(WEB)/src/*)
	@command -v npm >/dev/null || { echo "npm not found: install Node 20 and npm to build the workstation"; exit 2; }
	cd $(WEB) && npm ci --no-audit --no-fund && npm run build

# Debian tools the tests use: dciodvfy (dicom3tools) validates every DICOM object we write;
# tesseract-ocr reads burned-in text for `medsight deid --detect-text`; dcmtk (storescu, echoscu, findscu) and
# Orthanc + its DICOMweb plugin are the real peers of the service tests; PostgreSQL (started by the tests as an
# unprivileged user on 127.0.0.1) is the second database the job queue and study store are tested on.
# Chromium is the browser Playwright drives in the workstation tests (tests/workstation).
tools:
	@if ! command -v dciodvfy >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools >/dev/null) \
	      || echo "WARNING: could not install dicom3tools; tests that need dciodvfy will FAIL"; \
	  else echo "WARNING: dciodvfy missing and not root: run 'apt-get install dicom3tools'; tests that need it will FAIL"; fi; \
	fi
	@if ! command -v storescu >/dev/null || ! command -v Orthanc >/dev/null || [ ! -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk orthanc orthanc-dicomweb >/dev/null) \
	      || echo "WARNING: could not install dcmtk/orthanc; the service tests will FAIL"; \
	  else echo "WARNING: dcmtk or orthanc missing and not root: run 'apt-get install dcmtk orthanc orthanc-dicomweb'; service tests will FAIL"; fi; \
	fi
	@if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
	      || echo "WARNING: could not install postgresql; the job-queue tests on PostgreSQL will FAIL"; \
	  else echo "WARNING: PostgreSQL missing and not root: run 'apt-get install postgresql'; queue tests will FAIL"; fi; \
	fi
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "WARNING: could not install chromium; the workstation's browser tests will FAIL"; \
	  else echo "WARNING: chromium missing and not root: run 'apt-get install chromium'; browser tests will FAIL"; fi; \
	fi
	@if ! command -v tesseract >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tesseract-ocr tesseract-ocr-eng >/dev/null) \
	      || echo "WARNING: could not install tesseract-ocr; the OCR tests of deid will FAIL under CI"; \
	  else echo "WARNING: tesseract missing and not root: run 'apt-get install tesseract-ocr'; OCR tests will FAIL under CI"; fi; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP) tools web
	$(VENV)/bin/pytest -q -n 2 --dist loadfile

test: lint typecheck unit

demo: $(STAMP) web
	@test -n "$$MEDSIGHT_DATA" || { echo "MEDSIGHT_DATA is not set and ../shared/data is missing"; exit 2; }
	$(VENV)/bin/medsight train medmnist:pneumoniamnist --out $(DEMO_OUT)/pneumonia_bundle --seed 0 --time-budget 300
	$(VENV)/bin/medsight evaluate $(DEMO_OUT)/pneumonia_bundle medmnist:pneumoniamnist --split test --out $(DEMO_OUT)/evaluation
	$(VENV)/bin/medsight predict $(DEMO_OUT)/pneumonia_bundle "$$MEDSIGHT_DATA/dicom_samples/pydicom_data/RG3_J2KR.dcm" --explain --out $(DEMO_OUT)/prediction
	@echo ""
	@echo "Bundle (weights, ONNX, bundle.json): $(DEMO_OUT)/pneumonia_bundle"
	@echo "Model card:                         $(DEMO_OUT)/evaluation/card.html"
	@echo "Metrics with 95% CIs:               $(DEMO_OUT)/evaluation/metrics.json"
	@echo "Prediction + Grad-CAM on real DICOM: $(DEMO_OUT)/prediction"

# The quick benchmarks (about 30 minutes on 2 idle cores); the long trainings are listed in docs/benchmarks.md.
benchmarks: $(STAMP)
	$(PY) benchmarks/engine_overhead.py
	$(PY) benchmarks/runtime_latency.py
	$(PY) benchmarks/deid.py
	$(PY) benchmarks/medmnist.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache
