# hoopd developer commands. `make run` starts a dev gateway, `make test` runs every test.

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.hoopd-installed

.PHONY: venv run test deps bench peer clean

venv: $(STAMP)

# Editable install in compat mode so twistd finds twisted/plugins/hoopd_plugin.py,
# then Twisted's plugin cache is written once (a read-only tree cannot write it later).
$(STAMP): setup.cfg pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat
	$(VPY) -c 'from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))'
	touch $@

deps:
	bash scripts/install-deps.sh

run: venv
	$(VPY) scripts/devrun.py

test: deps venv
	$(VPY) -m pytest -q

bench: deps venv
	$(VPY) bench/run.py
	$(VPY) bench/run.py --journal
	$(VPY) bench/run.py --workers

# psycopg's own test suite, directly and through hoopd (not CI: ~5 minutes)
peer: deps venv
	$(VPY) scripts/peer.py

clean:
	rm -rf $(VENV) tests/node/node_modules twisted/plugins/dropin.cache
