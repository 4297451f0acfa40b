# trajstack: `make stage1 stage2 blend` runs the whole pipeline on the demo data (generated on
# first use) or on DATA=path/to/dataset. Every target depends on what it needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_SYS ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
TRAJSTACK  := $(VENV)/bin/trajstack
# The pipeline's own dependencies; `make test`, `bench`, `lint` and `vlm` add EXTRAS (pytest and
# ruff, Ray, MLflow, transformers), which the main job never imports: a fresh clone's first
# `make stage1 stage2 blend` does not wait for them.
STAMP      := $(VENV)/.installed
EXTRAS_STAMP := $(VENV)/.installed-extras
# The local torch build on these machines; a plain newer torch would download gigabytes.
TORCH_PIN  ?= torch==2.14.1 torchvision==0.29.1
EXTRAS     ?= dev,ray,tracking,vlm

DEMO_DATA  := data/demo
DATA       ?= $(DEMO_DATA)
EXP        ?= demo
CONFIG     ?= configs/demo.yaml
# Empty: every learner of the config's stage2.learners (the demo: lightgbm, xgboost, catboost).
LEARNER    ?=
NPROC      ?= 1
BENCH      ?=
ARGS       ?=
DEMO_TRAIN_SCENES ?= 400
DEMO_TEST_SCENES  ?= 80
DEMO_SEED  ?= 0

COMMON = --config $(CONFIG) --data $(DATA) --exp $(EXP) $(ARGS)

.PHONY: help setup demo-data full-data validate cache vlm folds stage1 stage2 blend report stage1-value all test bench lint clean

help:
	@echo "make stage1 stage2 blend   full pipeline on the demo data (DATA=... for your own)"
	@echo "make stage1-value          each stage-1 run's stage-2 and blend CV without it (report)"
	@echo "make test                  test suite (CPU, offline)"
	@echo "make bench | lint | clean  benchmarks into README | ruff | remove outputs"
	@echo "variables: DATA EXP CONFIG LEARNER NPROC ARGS='key=value ...'"
	@echo "  LEARNER=xgboost (or a,b) runs those stage-2 learners; empty: the config's stage2.learners"

setup: $(EXTRAS_STAMP)

# Redone only when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e .
	touch $@

$(EXTRAS_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

$(DEMO_DATA)/train_features.csv: | $(STAMP)
	$(PY) -m drivesim --out $(DEMO_DATA) --train-scenes $(DEMO_TRAIN_SCENES) \
	    --test-scenes $(DEMO_TEST_SCENES) --seed $(DEMO_SEED) --workers 2

demo-data: $(DEMO_DATA)/train_features.csv

# The real competition's scale (9,053 train + 468 test scenes, about 45,000 rows): 15-30 min on
# two cores; `python -m benchmarks.bench_drivesim --full-scale data/full` reports its figures.
FULL_DATA  := data/full
FULL_TRAIN_SCENES ?= 9053
FULL_TEST_SCENES  ?= 468

# GNU time, where present, records wall time and peak memory beside the data ($(FULL_DATA).time).
TIME_V     := $(if $(wildcard /usr/bin/time),/usr/bin/time -v -o $(FULL_DATA).time,)

$(FULL_DATA)/train_features.csv: | $(STAMP)
	$(TIME_V) $(PY) -m drivesim --out $(FULL_DATA) --train-scenes $(FULL_TRAIN_SCENES) \
	    --test-scenes $(FULL_TEST_SCENES) --seed $(DEMO_SEED) --workers 2

full-data: $(FULL_DATA)/train_features.csv

# The demo data is generated on first use; user data (DATA=...) is only read.
DATA_DEP := $(if $(filter $(DEMO_DATA),$(DATA)),$(DEMO_DATA)/train_features.csv,)

validate: $(STAMP) $(DATA_DEP)
	$(TRAJSTACK) validate --data $(DATA) --config $(CONFIG) $(ARGS)

cache: $(STAMP) $(DATA_DEP)
	$(TRAJSTACK) cache $(COMMON)

# Qwen2-VL features into a resumable cache (weights: a local folder, or downloaded from the hub).
vlm: $(EXTRAS_STAMP) $(DATA_DEP)
	$(TRAJSTACK) vlm $(COMMON)

folds: $(STAMP) $(DATA_DEP)
	$(TRAJSTACK) folds $(COMMON)

stage1: $(STAMP) $(DATA_DEP)
	$(TRAJSTACK) stage1 $(COMMON) --nproc $(NPROC)

# stage 2 reads stage 1's OOF features; `make stage2 -o stage1` skips that when they are off.
stage2: stage1
	$(TRAJSTACK) stage2 $(COMMON) $(if $(LEARNER),--learner $(LEARNER),)

blend: stage2
	$(TRAJSTACK) blend $(COMMON)

report: $(STAMP) $(DATA_DEP)
	$(TRAJSTACK) report $(COMMON)

# Each stage-1 run's value after stacking: stage 2 refit without each stage-1 run in turn
# (stage2/<learner>-without-<run>/), then the report's table "Stage-1 runs after stacking".
stage1-value: blend
	$(TRAJSTACK) stage2 $(COMMON) $(if $(LEARNER),--learner $(LEARNER),) --without-stage1 all
	$(TRAJSTACK) report $(COMMON)

all: stage1 stage2 blend

test: $(EXTRAS_STAMP)
	$(PY) -m pytest -q

bench: $(EXTRAS_STAMP) $(DATA_DEP)
	$(PY) -m benchmarks.run --data $(DATA) --config $(CONFIG) --exp $(EXP) --readme README.md \
	    $(if $(BENCH),--only $(BENCH),)

lint: $(EXTRAS_STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf outputs
