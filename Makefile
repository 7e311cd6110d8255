# The two commands the README gives: `make run` (everything, in the foreground) and `make test`.
PYTHON ?= python3
PIP_FLAGS ?= --quiet --disable-pip-version-check

.PHONY: install run test test-all services-start services-stop bench clean

install:  ## Python package, Redis and Chromium (Debian), the Kafka jars (Maven Central)
	@command -v redis-server >/dev/null || { command -v apt-get >/dev/null && \
	  (apt-get install -y -qq redis-server >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq redis-server)); } \
	  || { echo "redis-server is missing: install Debian's redis-server package" >&2; exit 1; }
	@# the dashboard's browser test drives a headless Chromium; without it that test skips, saying why
	@{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || { command -v apt-get >/dev/null && \
	  (apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver)); } \
	  || echo "chromium and chromium-driver are missing: the dashboard's browser test will skip" >&2
	$(PYTHON) -m pip install $(PIP_FLAGS) -e '.[test]'
	$(PYTHON) -c "from streamrec.services import LocalKafka; from core.settings import Settings; LocalKafka(Settings().state_dir).install()"

run: install  ## start Kafka, Redis, the worker and the API; Ctrl-C stops all
	$(PYTHON) -m streamrec up

test: install  ## the default test run (uses STREAMREC_* services if set, else starts local ones)
	$(PYTHON) -m pytest -m "not slow"

services-start: install
	$(PYTHON) -m streamrec services start

services-stop:
	$(PYTHON) -m streamrec services stop

clean:
	rm -rf .streamrec .pytest_cache .hypothesis
