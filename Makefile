# mas4h — build, test, demo. Run the README's commands as root on Debian 12.
export PATH := $(PATH):/usr/local/go/bin
GO      ?= go
PREFIX  ?= /usr/local
DESTDIR ?=
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build deps test lint bench demo demo-stop install clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/mas4h ./cmd/mas4h

# System parts the slave and the tests drive for real (apt-get, only when missing).
deps:
	./scripts/deps.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# The test command of the README and of .ci/run. MAS4H_E2E=1 turns a missing
# system part or root into a failure instead of a skip.
test: deps lint build
	$(GO) test -count=1 -timeout 20m ./...

bench: deps build
	$(GO) run ./bench/cmd/mas4h-bench -bin bin/mas4h -n 50 -hook-runs 1000 -out bench/results

demo: deps build
	./scripts/demo.sh start

demo-stop:
	./scripts/demo.sh stop

install: build
	install -D -m 0755 bin/mas4h $(DESTDIR)$(PREFIX)/bin/mas4h

clean:
	rm -rf bin dist
