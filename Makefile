# The two commands: `make run` and `make test`. Everything they need is installed on the way.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run run-deps test bench lint system-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

## Start the command center on the embedded default with the demo city (wall on http://127.0.0.1:8000/).
run: run-deps $(STAMP)
	$(BIN)/cityops run --demo

# What the demo itself needs from Debian: ffmpeg (its HLS and RTSP cameras, the live view) and
# rtsp-server-perl (its RTSP relay). The servers of the tests are not needed to run the demo.
run-deps:
	bash scripts/install-system-deps.sh --run

system-deps:
	bash scripts/install-system-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## Every test, against real Mosquitto, Redis, InfluxDB and PostgreSQL started on free ports.
test: system-deps $(STAMP) lint
	$(BIN)/python -m pytest -p no:cacheprovider

## Benchmarks: figures as ratios against a baseline measured in the same run.
bench: system-deps $(STAMP)
	$(BIN)/python -m bench.bus
	$(BIN)/python -m bench.rules
	$(BIN)/python -m bench.incident_latency
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.cameras
	$(BIN)/python -m bench.tickets
	$(BIN)/python -m bench.wall
	$(BIN)/python -m bench.notify
	$(BIN)/python -m bench.peers
	$(BIN)/python -m bench.api

clean:
	rm -rf $(VENV) data .mypy_cache .ruff_cache
