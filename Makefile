# trio-mta developer entry points. `make run` and `make test` are the two a newcomer needs.
# Nothing here needs root: system packages (swaks, dnsmasq-base) come from .ci/run or apt.

PYTHON ?= python3
VENV   := .venv
# The stamp's name records which top-level packages existed at install time: the editable install
# maps only those, so a package appearing (trio_mta/, plugins/ gaining __init__.py) reinstalls once.
STAMP  := $(VENV)/.installed-dev$(if $(wildcard trio_mta/__init__.py),-t)$(if $(wildcard plugins/__init__.py),-p)
PYTEST_ARGS ?=

.PHONY: venv tools run test check bench

# Reinstall only when pyproject.toml changes (or a top-level package appears, see STAMP).
venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || { $(PYTHON) -m venv $(VENV) && \
		$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip; }
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-dev*
	@touch $@

# Postfix's smtp-source/smtp-sink and postsrsd, unpacked into .tools/ (no daemon, no root).
tools:
	@scripts/get-postfix-tools
	@scripts/get-postsrsd

run: venv
	$(VENV)/bin/trio-mta run --config conf

test: venv tools
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

check: venv
	scripts/check

bench: venv tools
	scripts/bench
