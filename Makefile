# filterspark — the two front-door commands (see README.md):
#   make demo   install, then run the extraction + analysis jobs on the built-in demo zoo
#               and write the HTML report (report/index.html)
#   make test   install, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export SPARK_LOCAL_IP ?= 127.0.0.1
export PYSPARK_PYTHON := $(abspath $(BIN)/python)
export PYSPARK_DRIVER_PYTHON := $(abspath $(BIN)/python)
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/filterspark setup
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/spark-submit jobs/extract.py
	$(BIN)/spark-submit jobs/analyze.py
	$(BIN)/filterspark report --warehouse ./warehouse --out ./report

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf warehouse demo_zoo report
