# One entry point for people and CI. Every target sets up its own virtualenv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup test test-fast demo cluster-demo bench proto check-proto clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,test,bench]'
	touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check cpml tests bench scripts
	$(BIN)/ruff format --check cpml tests bench scripts
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

demo: $(STAMP)
	$(BIN)/cpml-master train --dataset digits-4v9 --workers-local 10 --iterations 50 --out runs/demo --log-level warning

# docker/compose.yaml: docker compose where an engine answers, else podman through scripts/cluster_demo.py
# (installed here, as root, when missing: Debian's podman, runc and debootstrap)
cluster-demo: $(STAMP)
	@docker info >/dev/null 2>&1 || { command -v podman && command -v runc && command -v debootstrap; } >/dev/null \
		|| { apt-get update -qq && apt-get install -y -qq podman runc debootstrap; }
	$(BIN)/python scripts/cluster_demo.py

bench: $(STAMP)
	$(BIN)/python bench/bench_field.py

proto: $(STAMP)
	$(BIN)/python -m pip install --quiet 'grpcio-tools==1.85.1' 'mypy-protobuf==5.1.0'
	$(BIN)/python scripts/gen_proto.py

check-proto: $(STAMP)
	$(BIN)/python -m pip install --quiet 'grpcio-tools==1.85.1' 'mypy-protobuf==5.1.0'
	$(BIN)/python scripts/gen_proto.py --check

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
