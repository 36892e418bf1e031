# The two commands of the README:
#   make run    set up and run the whole stack on embedded defaults
#   make test   set up and run the whole test suite
.PHONY: run test bootstrap check lint lint-checks bench

PY := .venv/bin/python

run: bootstrap
	$(PY) -m app dev

# scripts/audit: a known vulnerability fails the run; vulnerability data that cannot be reached
# only warns: a machine that sees only a package mirror cannot query PyPI's JSON API or OSV
# (docs/reliability.md). Drop AUDIT_UNREACHABLE=warn where they answer.
test:
	scripts/bootstrap --test
	AUDIT_UNREACHABLE=warn scripts/audit
	$(MAKE) --no-print-directory lint-checks
	scripts/run-tests

bootstrap:
	scripts/bootstrap

# Static checks: ruff (style, imports, likely bugs) and mypy (types), both set in pyproject.toml;
# `make lint` sets up first, `make test` runs them after its own set-up, before the tests.
lint: bootstrap lint-checks

lint-checks:
	$(PY) -m ruff check app celeryconfig.py bench tests scripts
	$(PY) -m mypy

check: bootstrap
	$(PY) -m app check

# Every benchmark, side by side with its baseline; writes docs/performance.md (about 15 min;
# BENCH_ARGS=--quick for a smoke run of a few minutes).
bench: bootstrap
	$(PY) -m bench $(BENCH_ARGS)
