# The two set-up commands (see README): `make demo` and `make test`.
# Each bootstraps .venv when missing, installs the project, then runs.
VENV ?= .venv
STAMP := $(VENV)/.synctalk-installed
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=

.PHONY: demo test install clean

$(STAMP): pyproject.toml setup.py scripts/bootstrap.sh
	bash scripts/bootstrap.sh $(VENV)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/synctalk demo --out $(DEMO_OUT)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache build *.egg-info
