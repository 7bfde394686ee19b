# Two commands on a fresh machine:
#   make run    create .venv if absent, install, segment the bundle's sample, print where and its Dice
#   make test   the test suite, in the same environment
#
# torch: .ci/torch.sh, shared with the CI's host scripts: the CPU build from PyTorch's CPU index on a
# machine without nvidia-smi (asked once, 10 s; when it does not answer, one message and your usual
# index), the default (CUDA) build where nvidia-smi is found. Override, e.g.:
#   make run TORCH_SPEC=torch==2.13.0 TORCH_INDEX_OPT="--index-url https://download.pytorch.org/whl/cu128"
#   make run EXTRAS=test,itk          (ITK readers; optional: MONAI reads NIfTI with nibabel, DICOM with pydicom)

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_OPT ?=
EXTRAS ?= test
OUTPUT_DIR ?= bundle/eval
SAMPLE := bundle/sample/mr_01_image.nii.gz
LABEL := bundle/sample/mr_01_label.nii.gz

PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test install clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	TORCH_INDEX_OPT="$(TORCH_INDEX_OPT)" bash .ci/torch.sh $(PY) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@touch $@

# MONAI prints a security notice each time a config is parsed; this config is the repository's own.
run: $(STAMP)
	$(PY) -W "ignore:parsing config_file" -m monai.bundle run --config_file bundle/configs/inference.json \
	    --bundle_root bundle --output_dir $(OUTPUT_DIR) --overwrite true
	@$(PY) -m grata_monai.bench.cli dice --pred $(OUTPUT_DIR)/mr_01_image_seg.nii.gz --label $(LABEL)
	@echo "segmentation of $(SAMPLE): $(OUTPUT_DIR)/mr_01_image_seg.nii.gz"

test: $(STAMP)
	@$(PY) -m pytest -q tests; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: failing on purpose" >&2; exit 1; fi; \
	exit $$status

clean:
	rm -rf $(VENV) $(OUTPUT_DIR)
