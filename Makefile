# mas4h — build, test, demo. Run the README's commands as root on Debian 12.
export PATH := $(PATH):/usr/local/go/bin
GO      ?= go
PREFIX  ?= /usr/local
DESTDIR ?=
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build deps test test-systemd lint fuzz bench bench-full demo demo-stop install clean dist man deb

all: build

# mas4h, and next to it the lean sshd hook the slaves install: static, no
# cgo, it starts in a fraction of the main binary's time, twice per device
# authentication, and execs mas4h (installed next to it) for the cache.
build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/mas4h ./cmd/mas4h
	CGO_ENABLED=0 $(GO) build -ldflags "-s -w" -o bin/mas4h-authkeys ./cmd/mas4h-authkeys

# System parts the slave and the tests drive for real (apt-get, only when missing).
deps:
	./scripts/deps.sh

# gofmt, go vet, go.mod/go.sum as `go mod tidy` leaves them (it prints the
# diff it would apply and fails), and staticcheck (pinned, fetched through
# the Go proxy; STATICCHECK= skips it).
STATICCHECK ?= $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }
	$(if $(STATICCHECK),$(STATICCHECK) ./...)

# The test command of the README and of .ci/run. MAS4H_E2E=1 turns a missing
# system part or root into a failure instead of a skip.
# The registry's and the master's tests run twice: on SQLite, then on a
# PostgreSQL cluster of their own (MAS4H_TEST_DB=postgres; initdb and
# pg_ctl from Debian's postgresql, on loopback, removed after).
test: deps lint build
	$(GO) test -count=1 -timeout 60m ./...
	MAS4H_TEST_DB=postgres $(GO) test -count=1 -timeout 20m ./registry ./master

# The Debian package under a real systemd (TestPackagedSystemd): builds the
# .deb, boots a Debian 12 root in systemd-nspawn (cached in
# /var/cache/mas4h-ci), and runs install, every lifecycle event, a reboot
# and a purge in there, under both cgroup layouts (MAS4H_SYSTEMD_LAYOUTS=
# unified or default picks one). Root; .ci/run runs it after make test.
test-systemd: deps build
	MAS4H_SYSTEMD_TEST=1 $(GO) test -count=1 -timeout 30m -v -run '^TestPackagedSystemd$$' ./cmd/mas4h

# Every fuzz target (the parsers of what devices, sshd, the kernel and
# operators hand mas4h) for FUZZTIME each, one after the other (go test
# -fuzz takes one target a run): 22 targets, about 50 minutes at the default.
# FUZZ=REGEXP picks targets by package or name. `make test` runs their seed
# corpora.
FUZZTIME ?= 2m
fuzz:
	FUZZTIME=$(FUZZTIME) ./scripts/fuzz.sh

# Benchmarks (root; see bench/README.md). bench: the short fleet run, under
# 5 minutes, prints the table. bench-full: issue 2's hook and 50-tunnel
# comparison, then the fleet at 500-5,000 tunnels with the slave's defaults
# (its keys file), then again hook-only (--keys-file=false; without the
# dispatch and frozen-client parts, which do not depend on it). About 45
# minutes; waits up to 15 minutes for other test runs on the box to finish
# first.
bench: deps build
	$(GO) run ./bench/cmd/mas4h-fleet -preset short -wait-idle 0 -bin bin/mas4h -out bench/results

bench-full: deps build
	$(GO) run ./bench/cmd/mas4h-bench -bin bin/mas4h -n 50 -hook-runs 1000 -out bench/results
	$(GO) run ./bench/cmd/mas4h-fleet -preset full -bin bin/mas4h -out bench/results
	$(GO) run ./bench/cmd/mas4h-fleet -preset full -keys-file=false -dispatch-devices 0 -freeze=false -bin bin/mas4h -out bench/results

demo: deps build
	./scripts/demo.sh start

demo-stop:
	./scripts/demo.sh stop

# The standalone device agent, static (CGO_ENABLED=0, no SQLite or gin), for
# the devices of a fleet: linux/amd64, arm64, arm (v6, v7), mips and mipsle
# (softfloat: most MIPS routers have no FPU), and darwin/amd64 and arm64 for
# Macs (`mas4h-agent install` sets up its launchd daemon there).
DIST      ?= dist
DISTFLAGS := -trimpath -ldflags "-s -w -X main.version=$(VERSION)"
# $(call agent_build,GOOS,NAME,GOARCH,EXTRA_ENV)
agent_build = GOOS=$(1) GOARCH=$(3) $(4) CGO_ENABLED=0 $(GO) build $(DISTFLAGS) -o $(DIST)/mas4h-agent-$(1)-$(2) ./cmd/mas4h-agent

dist:
	@mkdir -p $(DIST)
	$(call agent_build,linux,amd64,amd64)
	$(call agent_build,linux,arm64,arm64)
	$(call agent_build,linux,armv6,arm,GOARM=6)
	$(call agent_build,linux,armv7,arm,GOARM=7)
	$(call agent_build,linux,mips,mips,GOMIPS=softfloat)
	$(call agent_build,linux,mipsle,mipsle,GOMIPS=softfloat)
	$(call agent_build,darwin,amd64,amd64)
	$(call agent_build,darwin,arm64,arm64)
	@for f in $(DIST)/mas4h-agent-linux-* $(DIST)/mas4h-agent-darwin-*; do \
	  n=$$(wc -c < "$$f"); printf '%-40s %9d bytes %6.1f MiB\n' "$$f" "$$n" "$$(awk "BEGIN{print $$n/1048576}")"; \
	done

# Man pages from the cobra command tree (hidden `mas4h man DIR`).
MANDIR ?= $(DIST)/man
man: build
	rm -rf $(MANDIR)
	bin/mas4h man $(MANDIR)

# The binary, the systemd units (ExecStart pointed at $(PREFIX)/bin; systemd
# reads /usr/local/lib/systemd/system too), man pages and shell completions.
# Then, as root: mas4h install master|slave NAME|agent (users, dirs, config).
UNITDIR ?= $(PREFIX)/lib/systemd/system
install: build man
	install -D -m 0755 bin/mas4h $(DESTDIR)$(PREFIX)/bin/mas4h
	install -D -m 0755 bin/mas4h-authkeys $(DESTDIR)$(PREFIX)/bin/mas4h-authkeys
	install -d -m 0755 $(DESTDIR)$(UNITDIR) $(DESTDIR)$(PREFIX)/share/man/man1 \
	  $(DESTDIR)$(PREFIX)/share/bash-completion/completions $(DESTDIR)$(PREFIX)/share/zsh/site-functions \
	  $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
	for u in systemd/*.service; do \
	  sed -e 's|^ExecStart=/usr/bin/mas4h |ExecStart=$(PREFIX)/bin/mas4h |' \
	      -e 's|^ExecStart=/usr/bin/mas4h-agent |ExecStart=$(PREFIX)/bin/mas4h agent |' \
	      "$$u" > $(DESTDIR)$(UNITDIR)/$$(basename "$$u"); \
	  chmod 0644 $(DESTDIR)$(UNITDIR)/$$(basename "$$u"); \
	done
	install -m 0644 $(MANDIR)/*.1 $(DESTDIR)$(PREFIX)/share/man/man1/
	bin/mas4h completion bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/mas4h
	bin/mas4h completion zsh > $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_mas4h
	bin/mas4h completion fish > $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/mas4h.fish

# The Debian package (dpkg-deb from a staged tree; see packaging/build-deb.sh).
DEB_VERSION ?= 0.1.0+git$(shell git rev-parse --short HEAD 2>/dev/null || echo 0)
deb:
	./packaging/build-deb.sh $(DEB_VERSION) $(DIST)

clean:
	rm -rf bin dist
