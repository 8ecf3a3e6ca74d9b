# make demo: set up (venv, system packages) and run the demo on the embedded default network.
# make test: set up, check the import fence between the levels (lint-imports), run the whole test suite.
# make demo CONSOLE=1: the demo, then the network stays up with the operator's console (its address printed).
VENV   ?= .venv
PY     := $(VENV)/bin/python
APT_PKGS := libyang2-dev libyang2-tools yangcli netconfd openssh-server gcc python3-venv bsdutils \
            nodejs npm chromium chromium-driver curl iproute2
# (npm: Debian's package, or the one a nodejs of another source brings)
STAMP  := $(VENV)/.installed
# The console's page: npm ci when the lock file changes, the build when its sources do.
WEB    := console/web
WEB_DEPS  := $(WEB)/node_modules/.installed
WEB_BUILT := $(WEB)/dist/.built

.PHONY: demo test setup system-packages clean

setup: $(STAMP) $(WEB_BUILT)

system-packages:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || { [ $$p = npm ] && command -v npm >/dev/null; } \
	  || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "Missing system packages:$$missing"; \
	    echo "Install them with: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

$(STAMP): pyproject.toml | system-packages
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

$(WEB_DEPS): $(WEB)/package-lock.json | system-packages
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(WEB_BUILT): $(WEB_DEPS) $(WEB)/build.mjs $(wildcard $(WEB)/src/*)
	cd $(WEB) && npm run --silent build
	@touch $@

demo: system-packages $(STAMP) $(WEB_BUILT)
	$(VENV)/bin/qstrata demo $(if $(CONSOLE),--console)

test: system-packages $(STAMP) $(WEB_BUILT)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info $(WEB)/node_modules $(WEB)/dist
