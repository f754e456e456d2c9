# `make test` and `make demo` set up whatever is missing first, idempotently:
# ffcv's system packages (apt-get), a .venv, and the package with its extras.
# A second run finds the stamp file and skips straight to the work.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.csa-lightning-installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := libopencv-dev libturbojpeg0-dev pkg-config

.PHONY: install test test-system test-slurm test-docs slurm docs docs-serve test-fast demo-litdata blockcheck blockcheck-reference lint format demo demo-strong demo-finetune demo-detection summary figures gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@if ! pkg-config --exists opencv4 libturbojpeg 2>/dev/null; then \
		echo "installing ffcv's system packages: $(APT_PACKAGES)"; \
		$(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends $(APT_PACKAGES); \
	fi
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[ffcv,detection,analysis,timm,export,publish,slurm,litdata,docs,dev]'
	@touch $(STAMP)

# The suite on two pytest-xdist workers (--dist loadgroup: tests that must not overlap share a
# worker), all but the end-to-end system tests (marker `system`: DDP launches, the ablation runner's
# real runs, signals to live processes, the GPU kit's dry run, installing the example project),
# which `make test-system` runs; CI (.ci/run) runs both. Plain `pytest` runs everything in one process.
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup -m "not system and not slurm"

# The end-to-end tests make test leaves out (marker `system`), on the same two workers.
test-system: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup -m system

# A one-node SLURM on this machine (root; Debian's slurm-wlm and munge; idempotent).
slurm:
	scripts/slurm_up.sh

# The manual (docs/*.md, mkdocs.yml) as a site in site/, strictly: a broken link or anchor, a page
# missing from the navigation, a documented parameter that no longer exists fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet
	$(PY) scripts/figures.py check

# Every command and snippet of README.md and docs/*.md run as a test, page by page in the site's
# order (tests/docs_harness.py): trainings shortened (CSA_SHORT_RUN), commands whose data or machine
# is not here parsed only (CSA_PARSE_ONLY). One pytest process: pages build on earlier ones' runs.
test-docs: $(STAMP)
	$(PY) -m pytest -p no:cacheprovider README.md docs

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

# The ablation runner's SLURM executor tested against the one-node SLURM `make slurm` brings up
# (docs/clusters.md). One pytest process: the jobs share the machine's cores with it.
test-slurm: $(STAMP) slurm
	$(PY) -m pytest -m slurm tests/test_slurm.py

# ruff (lint and formatting) and mypy (types, the package), configured in pyproject.toml; `make format` rewrites
# the files. .pre-commit-config.yaml runs the same before each commit (pre-commit install).
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# The edit-run loop: make test less the tests marked slow (no system, SLURM or slow tests).
test-fast: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup -m "not system and not slurm and not slow"

# The main job on the embedded data: CSA-ResNet-18 on scikit-learn's digits through the FFCV path.
demo: $(STAMP)
	$(PY) cli.py fit --config configs/demo/digits_csa.yaml

# The demo under the strong recipe (configs/recipe/strong.yaml: EMA, mixup/cutmix, random erasing,
# label smoothing, cosine + warm-up), shortened to the digits.
demo-strong: $(STAMP)
	$(PY) cli.py fit --config configs/demo/digits_csa.yaml --config configs/recipe/strong.yaml \
		--config configs/recipe/strong_digits.yaml

# The demo through LitData instead of FFCV (docs/data-loading.md): the digits as an ImageFolder tree,
# converted to LitData chunks, then the same config and recipe with the LitData module.
demo-litdata: $(STAMP)
	$(PY) -c "from csa_lightning.data.digits import write_digits_image_folder as w; w('data/digits/images_32px', 32)"
	$(PY) -m csa_lightning.data.write_litdata data/digits/images_32px data/digits/litdata --chunk-bytes 1MB
	$(PY) cli.py fit --config configs/demo/digits_csa.yaml --data csa_lightning.data.LitDataModule \
		--data.train_path data/digits/litdata/train --data.val_path data/digits/litdata/val

# Gates added to a trained network at identity, then fine-tuned in stages (docs/finetuning.md): a plain
# ResNet-18 trained on the digits, SE and CSA inserted into it, top-1 before the first step and after.
demo-finetune: $(STAMP)
	$(PY) examples/finetune_digits.py

# Faster R-CNN (CSA-ResNet-18-FPN) on digits pasted on canvases, starting from make demo's checkpoint
# (make demo runs first when there is none); configs/demo/digits_mask_rcnn_csa.yaml is the Mask R-CNN twin.
demo-detection: $(STAMP)
	@[ -n "$$(find runs/demo_digits_csa -name '*.ckpt' 2>/dev/null | head -1)" ] || $(MAKE) demo
	$(PY) cli.py fit --config configs/demo/digits_faster_rcnn_csa.yaml

# The parameter / GMAC table beside the paper's Table 1, with the authors' detection backbone
# (CSA in every block, pooled hybrid distances) as an extra row per depth.
AUTHORS_VARIANT := authors detection backbone|csa|{"placement": "every_block", "contiguity": "hybrid", "distance": "pooled"}
summary: $(STAMP)
	$(PY) -m csa_lightning.models.summary --depths 50,101 --variant '$(AUTHORS_VARIANT)'

# The README's analysis figures: the digits demo recipe with no gate, SE and CSA (one run each,
# resumable), then channel descriptors and Grad-CAM of the three.
FIG_RUNS := runs/analysis-digits
figures: $(STAMP)
	$(PY) -m csa_lightning.ablate --config configs/demo/digits_csa.yaml --attentions none,se,csa --seeds 0 --out $(FIG_RUNS)
	$(PY) -m csa_lightning.analyze descriptors --out figs/digits \
		--ckpt $(FIG_RUNS)/runs/none_seed0 --ckpt $(FIG_RUNS)/runs/se_seed0 --ckpt $(FIG_RUNS)/runs/csa_seed0 \
		--images data/digits/images_32px/val
	$(PY) -m csa_lightning.analyze gradcam --out figs/digits --limit 6 \
		--ckpt $(FIG_RUNS)/runs/none_seed0 --ckpt $(FIG_RUNS)/runs/se_seed0 --ckpt $(FIG_RUNS)/runs/csa_seed0 \
		--images data/digits/images_32px/val

# The block check kit (docs/writing-a-block.md): make blockcheck BLOCKS="your_pkg.YourGate" checks
# your blocks beside the built-ins' reference rows; runs/blockcheck/report.{md,json}.
BLOCKS ?=
blockcheck: $(STAMP)
	$(PY) -m csa_lightning.blockcheck $(BLOCKS) --builtins --out runs/blockcheck

# Re-measure every built-in block (all sections, ResNet-50 timings until stable; on an idle machine) and
# rewrite csa_lightning/blockcheck/reference.json, the rows --builtins shows beside a user's block.
blockcheck-reference: $(STAMP)
	$(PY) -m csa_lightning.blockcheck --write-reference --out runs/blockcheck-reference
	$(PY) scripts/figures.py render

# Every CUDA path on one GPU (benchmarks/gpu_check.py says how to run it on a bare GPU machine);
# writes runs/gpu-check/report.{md,json}, exits non-zero when a check fails.
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py --out runs/gpu-check

clean:
	rm -rf $(VENV) .pytest_cache
