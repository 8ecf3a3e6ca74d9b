# make demo: set up (venv, system packages) and run the demo on the embedded default network.
# make test: set up, check the import fence between the levels (lint-imports), run the whole test suite.
VENV   ?= .venv
PY     := $(VENV)/bin/python
APT_PKGS := libyang2-dev libyang2-tools yangcli netconfd openssh-server gcc python3-venv bsdutils
STAMP  := $(VENV)/.installed

.PHONY: demo test setup system-packages clean

setup: $(STAMP)

system-packages:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
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

demo: system-packages $(STAMP)
	$(VENV)/bin/qstrata demo

test: system-packages $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
