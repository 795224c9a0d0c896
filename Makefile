# rsvl — developer and user entry points. See README.md ("Quick start").
#   make demo     install if needed, then run the main job on the bundled sample scene
#   make test     install if needed, then run the test suite (what CI runs)
#   make install  Debian packages + .venv + Python requirements + qgis_process shim (idempotent)
#   make lint | bench | bench-accuracy | bench-explore | bench-scaleout | docs-bench | docs-images | package | clean

SHELL := /bin/bash
ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
PLUGIN_DIR := $(VENV)/qgis-plugins
DEB_PACKAGES := qgis python3-qgis qgis-providers python3-rasterio python3-gdal gdal-bin python3-venv python3-pip \
  xvfb xauth libgl1-mesa-dri
REQ_FILES := $(sort $(wildcard $(ROOT)/requirements/*.txt))
REQ_HASH := $(shell cat $(REQ_FILES) | sha256sum | cut -c1-16)
STAMP := $(VENV)/.rsvl-requirements-$(REQ_HASH)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=
DIST ?= $(ROOT)/dist
export QT_QPA_PLATFORM ?= offscreen
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test test-all lint bench bench-accuracy bench-explore bench-scaleout docs-bench docs-images package clean debs

install: debs $(STAMP) $(VENV)/bin/qgis_process $(PLUGIN_DIR)/rsvl

# Debian packages: installed only when one is missing (dpkg-query is quick).
debs:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "rsvl: installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(VENV)/bin/activate:
	/usr/bin/python3 -m venv --system-site-packages $(VENV)

# Python requirements: re-installed only when requirements/*.txt change (stamp keyed on their hash).
# requirements/dev.txt = the runtime list (what the plugin ZIP carries) + optional groups + CI pins + tools.
$(STAMP): $(VENV)/bin/activate $(REQ_FILES)
	$(VENV)/bin/pip install -q -r $(ROOT)/requirements/dev.txt
	rm -f $(VENV)/.rsvl-requirements-*
	touch $@

# The repository is the plugin folder; QGIS and Python know it by the name `rsvl`.
$(PLUGIN_DIR)/rsvl: $(VENV)/bin/activate
	mkdir -p $(PLUGIN_DIR)
	ln -sfn $(ROOT) $(PLUGIN_DIR)/rsvl
	$(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' | \
	  xargs -I{} sh -c 'echo $(PLUGIN_DIR) > {}/rsvl.pth'

$(VENV)/bin/qgis_process: $(ROOT)/resources/qgis_process.in $(VENV)/bin/activate
	sed -e 's|@PLUGIN_DIR@|$(PLUGIN_DIR)|g' \
	    -e "s|@SITE_PACKAGES@|$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')|g" \
	    $< > $@
	chmod +x $@

demo: install
	$(ROOT)/resources/demo.sh $(VENV) $(ROOT)/demo-output

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -m "" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check $(ROOT)

# docs/benchmarks.md and its plots, generated from bench/*.json (a test checks the page is current).
docs-bench: install
	$(PY) $(ROOT)/bench/docs.py

# docs/images/*.png screenshots, from the real desktop QGIS under a virtual X server.
docs-images: install
	$(PY) $(ROOT)/docs/make_images.py

bench: install
	$(PY) $(ROOT)/bench/run.py

# rsvl beside per-pixel baselines (random forest …) on random and checkerboard splits.
bench-accuracy: install
	$(PY) $(ROOT)/bench/accuracy.py

# The Explore panel: prompt and click latency on an embedded 1 Mpx view (bench/explore.json).
bench-explore: install
	$(PY) $(ROOT)/bench/explore.py

# Dask classification and torchrun training, 2 one-thread workers vs 1 (bench/scaleout.json).
bench-scaleout: install
	$(PY) $(ROOT)/bench/scaleout.py

# A zip for QGIS's "Install from ZIP" and the plugin repository: top folder rsvl/, only what
# the plugin needs at run time (the runtime requirement lists, no tests, benchmarks, docs or
# developer files); tests/test_plugin_package.py validates it against the repository's rules.
package:
	python3 $(ROOT)/resources/package.py $(ROOT) $(DIST)/rsvl.zip

clean:
	rm -rf $(VENV) $(ROOT)/dist $(ROOT)/demo-output .pytest_cache .ruff_cache
	find $(ROOT) -name __pycache__ -type d -prune -exec rm -rf {} +
