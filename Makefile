# The README's two commands: `make quickstart` (main job, embedded defaults) and `make test`.
# Both create .venv on first use; nothing needs to be installed by hand beyond Python 3.10+.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch comes from pip with exact pins: this machine serves these two from local disk (uv/poetry would not).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install quickstart ui test test-slow proto clean

$(BIN)/shopclip: pyproject.toml setup.py $(wildcard proto/shopclip/v1/*.proto)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/shopclip

quickstart: install
	$(BIN)/shopclip quickstart

# The administrators' console on quickstart's bundle, index and prediction log: a server in the background, then
# `shopclip ui` on http://127.0.0.1:8501 (Ctrl-C stops both).
QS := runs/quickstart
QS_LOG := sqlite:///$(CURDIR)/$(QS)/predictions.db
ui: install
	@test -d $(QS)/bundle || { echo "no $(QS)/bundle: run make quickstart first"; exit 2; }
	$(BIN)/shopclip serve --bundle $(QS)/bundle --index-root $(QS)/index --host 127.0.0.1 --port 50051 \
	  --prediction-log $(QS_LOG) --prediction-log-spill $(QS)/prediction-log-spill & server=$$!; \
	trap 'kill $$server 2>/dev/null' EXIT INT TERM; \
	$(BIN)/shopclip ui --target 127.0.0.1:50051 --catalogue $(QS)/catalogue --index-root $(QS)/index \
	  --prediction-log $(QS_LOG)

test: install
	$(BIN)/python -m pytest

# Real weights and real data: minutes. .ci/run runs it when time allows.
test-slow: install
	$(BIN)/python -m pytest -m slow

proto: install
	$(BIN)/python -m pip install -q -e . --no-deps

clean:
	rm -rf runs build *.egg-info proto/shopclip/v1/*_pb2*.py proto/shopclip/v1/*_pb2*.pyi
