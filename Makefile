# Two commands on a fresh machine:
#   make run    create .venv if absent, install, segment the bundle's sample with and without adaptation,
#               print where and the Dice of both
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

# The sample with test-time adaptation, then plain (--adapt false: the source model, MONAI's
# SlidingWindowInferer) for comparison; python -m grata_monai.bundle is MONAI's bundle command line
# with the bundle's console (one-line errors, no notice that a config can run code: this one is ours).
run: $(STAMP)
	$(PY) -m grata_monai.bundle run --config_file bundle/configs/inference.json \
	    --bundle_root bundle --output_dir $(OUTPUT_DIR) --overwrite true
	$(PY) -m grata_monai.bundle run --config_file bundle/configs/inference.json \
	    --bundle_root bundle --output_dir $(OUTPUT_DIR)/plain --overwrite true --adapt false
	@printf "adapted (GraTa): "; $(VENV)/bin/grata-monai dice --pred $(OUTPUT_DIR)/mr_01_image_seg.nii.gz --label $(LABEL)
	@printf "plain:           "; $(VENV)/bin/grata-monai dice --pred $(OUTPUT_DIR)/plain/mr_01_image_seg.nii.gz \
	    --label $(LABEL)
	@echo "segmentation of $(SAMPLE): $(OUTPUT_DIR)/mr_01_image_seg.nii.gz (plain: $(OUTPUT_DIR)/plain/)"

test: $(STAMP)
	@$(PY) -m pytest -q tests; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: failing on purpose" >&2; exit 1; fi; \
	exit $$status

clean:
	rm -rf $(VENV) $(OUTPUT_DIR)
