# Konsult room unit. `make run` and `make test` are the README's two commands.
GO      ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.Version=$(VERSION)
CACHE   := $(CURDIR)/.cache
export PATH := $(CACHE)/bin:$(PATH)

.PHONY: run run-offline test setup bench lint build clean lab

## run: the simulated room unit in a local LiveKit conference, with a page to be the patient
run:
	@bash .ci/builddeps
	@SKIP_CHROMIUM=1 bash .ci/farend-setup.sh
	@GO=$(GO) bash .ci/demo

## run-offline: the simulated unit alone, built-in defaults, local simulated conference
run-offline:
	@bash .ci/builddeps
	$(GO) run -ldflags "$(LDFLAGS)" ./cmd/roomd --sim

## setup: install what the tests need (apt packages, LiveKit, livekit-client, linters)
setup:
	bash .ci/setup

## test: set up, then the whole suite with the race detector; real parts are required
test: setup
	KONSULT_REQUIRE_REAL_PARTS=1 $(GO) test -race -count=1 -timeout 20m ./...

## bench: the benchmarks, printed as a table (raw output in .cache/bench.txt); ~3 min
bench:
	@mkdir -p $(CACHE)
	@{ $(GO) test -run '^$$' -bench . -benchtime 20x ./cmd/... && \
	   $(GO) test -run '^$$' -bench . -benchtime 200x ./hal/... ./media/gate/...; } > $(CACHE)/bench.txt 2>&1 || { cat $(CACHE)/bench.txt; exit 1; }
	@awk '/^pkg:/ {pkg=$$2} /^Benchmark/ { \
	    line=sprintf("%-58s %12s ns/op", $$1, $$3); \
	    for (i=5; i<NF; i+=2) line=line sprintf("  %s %s", $$i, $$(i+1)); \
	    print line }' $(CACHE)/bench.txt

## lab: the QEMU hardware lab (Debian's kernel, vivid, snd-aloop, gpio-sim, vicodec; roomd inside); ~3-5 min, root
lab: setup
	KONSULT_LAB=1 KONSULT_REQUIRE_REAL_PARTS=1 $(GO) test -count=1 -timeout 15m -v -run '^TestLab$$' ./image/lab/

## lint: gofmt, go vet, staticcheck
lint: setup
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	staticcheck ./...

## build: roomd and roomctl for linux/amd64 and linux/arm64 into bin/
build:
	for arch in amd64 arm64; do \
	  for cmd in roomd roomctl; do \
	    CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/linux-$$arch/$$cmd ./cmd/$$cmd || exit 1; \
	  done; \
	done
	@ls -l bin/linux-*/

clean:
	rm -rf bin
