# quoted: the two commands of README.rst (make run, make test), plus lint.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
ARGS   ?=

.PHONY: install install-test run test lint redis clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Installs quoted (editable) with the versions CI tested.
install: $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt --config-settings editable_mode=compat -e .
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; import twisted.plugins; list(getPlugins(IPlugin, twisted.plugins))"

# Installs quoted with its test and lint tools; again only when what it installs from changed
# (the stamp file), so make test does not spend seconds in pip each time.
install-test: $(VENV)/.installed-test

$(VENV)/.installed-test: $(BIN)/python setup.cfg pyproject.toml constraints.txt
	@# the distribution was called quoted before 0.1.0 (quoted-server now): the editable
	@# install's old metadata would still make a second, stale "quoted 1.0.0" distribution
	rm -rf quoted.egg-info
	$(BIN)/pip install -q -c constraints.txt --config-settings editable_mode=compat -e '.[test,dev]'
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; import twisted.plugins; list(getPlugins(IPlugin, twisted.plugins))"
	touch $@

# The daemon on built-in defaults: simulator, in-memory hub, development
# auth that prints a demo token, on 127.0.0.1:8080.
run: install
	$(BIN)/twistd --nodaemon --pidfile= --logger=quoted.logs.observer quoted --dev $(ARGS)

# Starts a Redis on 127.0.0.1:6379 when nothing answers there.
redis:
	@$(BIN)/python -c "import socket; socket.create_connection(('127.0.0.1', 6379), 1).close()" 2>/dev/null \
	  || redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes

test: install-test redis
	$(BIN)/pytest $(ARGS)

# ruff reads every Python file (bench/run and bench/table have no .py suffix: pyproject.toml
# names them); mypy --strict checks quoted/, the plugin, bench/ and examples/ (each script on
# its own, since every script is a __main__; the example plugin's two modules together)
lint: install-test
	$(BIN)/ruff check quoted tests twisted bench examples
	$(BIN)/ruff format --check quoted tests twisted bench examples
	$(BIN)/mypy
	$(BIN)/mypy bench/*.py
	for script in bench/run bench/table; do $(BIN)/mypy $$script || exit 1; done
	$(BIN)/mypy examples/make_replay_sample.py
	$(BIN)/mypy examples/ndjson_tcp/ndjson_tcp.py examples/ndjson_tcp/twisted/plugins/ndjson_tcp_feed.py

clean:
	rm -rf $(VENV) build dist *.egg-info twisted/plugins/dropin.cache
