# `make test` and `make demo` set up whatever is missing first, idempotently:
# ffcv's system packages (apt-get), a .venv, and the package with its extras.
# A second run finds the stamp file and skips straight to the work.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.csa-lightning-installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := libopencv-dev libturbojpeg0-dev pkg-config

.PHONY: install test test-fast demo summary clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@if ! pkg-config --exists opencv4 libturbojpeg 2>/dev/null; then \
		echo "installing ffcv's system packages: $(APT_PACKAGES)"; \
		$(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends $(APT_PACKAGES); \
	fi
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[ffcv,dev]'
	@touch $(STAMP)

# The whole suite, slow tests included (none is skipped by default).
test: $(STAMP)
	$(PY) -m pytest

# Only the quick tests, for the edit-run loop.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

# The main job on the embedded data: CSA-ResNet-18 on scikit-learn's digits through the FFCV path.
demo: $(STAMP)
	$(PY) cli.py fit --config configs/demo/digits_csa.yaml

# The parameter / GMAC table beside the paper's Table 1.
summary: $(STAMP)
	$(PY) -m csa_lightning.models.summary --depths 50,101

clean:
	rm -rf $(VENV) .pytest_cache
