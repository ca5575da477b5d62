# meterstream: `make run` starts the whole pipeline, `make test` runs every test.
# Both bootstrap what they need: Debian packages (JDK, Maven, Prometheus, a Rust toolchain
# when there is none), a virtualenv with the project installed (pip builds the native/
# crate), and the Kafka jars (fetched from Maven Central on first use).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Local-development webhook credentials (source:user:password), only if none are set.
export METERSTREAM_BRIDGE_CREDENTIALS ?= local:meterstream:meterstream

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint protos bench deps venv clean docs

# Installs what is missing. The packages' daemons are not wanted (and Alertmanager's
# default :9093 is the embedded Kafka's controller port), so they are disabled.
deps:
	@missing=""; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	command -v amtool >/dev/null || missing="$$missing prometheus-alertmanager"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v cargo >/dev/null || missing="$$missing cargo-web rustc-web"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	  $(SUDO) systemctl disable --now prometheus prometheus-alertmanager >/dev/null 2>&1 || true; \
	fi

# Rebuilt when the crate changes too: an editable install compiles native/ in place.
$(STAMP): pyproject.toml native/Cargo.toml native/Cargo.lock $(wildcard native/src/*.rs)
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(STAMP)

run: deps venv
	$(PY) -m streams run

lint: venv
	$(VENV)/bin/ruff check streams tests bench
	$(VENV)/bin/mypy

protos: venv
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=streams/protos_gen --pyi_out=streams/protos_gen protos/smartme_realtime.proto

test: deps venv lint
	$(PY) -m pytest -q

bench: deps venv
	$(PY) -m bench

clean:
	rm -rf $(VENV) .meterstream .pytest_cache .mypy_cache .ruff_cache native/target streams/_native*.so

# Regenerate the settings table in the README from streams/config.py.
docs: venv
	$(PY) -c 'import re,subprocess,sys; t=subprocess.run([sys.executable,"-m","streams","settings"],capture_output=True,text=True,check=True).stdout; p="README.md"; s=open(p).read(); s=re.sub(r"(<!-- settings:begin -->\n).*?(<!-- settings:end -->)", lambda m: m.group(1)+t+m.group(2), s, flags=re.S); open(p,"w").write(s)'
