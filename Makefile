# The two commands of the README:
#   make run    set up and run the whole stack on embedded defaults
#   make test   set up and run the whole test suite
.PHONY: run test bootstrap check lint

PY := .venv/bin/python

run: bootstrap
	$(PY) -m app dev

test:
	scripts/bootstrap --test
	scripts/run-tests

bootstrap:
	scripts/bootstrap

check: bootstrap
	$(PY) -m app check
